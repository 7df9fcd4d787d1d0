"""GLUE: local files in the official GLUE download layout, and tokenisation.

Every task is read into a `datasets.Dataset` with the hub's columns (`nyu-mll/glue`) and its
integer labels (float for STS-B), so local and hub data go through the same `Dataset.map`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets
import numpy as np

from .tasks import DataError, TaskSpec
from .utils import arrow_to_numpy

__all__ = ["GLUE_TSV_FORMATS", "TsvFormat", "read_glue_tsv", "tokenize_glue"]


@dataclasses.dataclass(frozen=True)
class TsvFormat:
    """Where the fields of one GLUE task live in its tsv rows.

    `text_fields` are field indices for `TaskSpec.text_keys`; `label_field` may be negative
    (counted from the end). `header` lists (index, expected name) checks for the first line,
    or is None when the file has no header. Rows with a field count other than `num_fields`
    (None: any, as long as the indices exist) raise, or are skipped when `skip_bad_rows`.
    """

    text_fields: tuple[int, ...]
    label_field: int
    header: tuple[tuple[int, str], ...] | None
    num_fields: int | None = None
    skip_bad_rows: bool = False


GLUE_TSV_FORMATS: dict[str, TsvFormat] = {
    # gj04<TAB>1<TAB><TAB>The sailors rode the breeze clear of the rocks.
    "cola": TsvFormat((3,), 1, None, num_fields=4),
    # sentence label
    "sst2": TsvFormat((0,), 1, ((0, "sentence"), (1, "label")), num_fields=2),
    # Quality #1 ID #2 ID #1 String #2 String
    "mrpc": TsvFormat((3, 4), 0, ((0, "quality"), (3, "#1 string"), (4, "#2 string")),
                      num_fields=5),
    # index genre filename year old_index source1 source2 sentence1 sentence2 score
    "stsb": TsvFormat((7, 8), -1, ((7, "sentence1"), (8, "sentence2"), (-1, "score")),
                      num_fields=10),
    # id qid1 qid2 question1 question2 is_duplicate (a few train rows are malformed: skipped)
    "qqp": TsvFormat((3, 4), 5, ((3, "question1"), (4, "question2"), (5, "is_duplicate")),
                     num_fields=6, skip_bad_rows=True),
    # index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse
    # sentence1 sentence2 label1 [label2 .. label5 in dev] gold_label
    "mnli": TsvFormat((8, 9), -1, ((8, "sentence1"), (9, "sentence2"), (-1, "gold_label"))),
    # index question sentence label
    "qnli": TsvFormat((1, 2), -1, ((1, "question"), (2, "sentence"), (-1, "label")), num_fields=4),
    # index sentence1 sentence2 label
    "rte": TsvFormat((1, 2), -1, ((1, "sentence1"), (2, "sentence2"), (-1, "label")), num_fields=4),
    "wnli": TsvFormat((1, 2), -1, ((1, "sentence1"), (2, "sentence2"), (-1, "label")),
                      num_fields=4),
}


def _parse_label(spec: TaskSpec, raw: str, path: Path, lineno: int):
    raw = raw.strip()
    if spec.kind == "regression":
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {raw!r} is not a number") from None
    if raw in spec.label_names:
        return spec.label_names.index(raw)
    if raw.isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    raise DataError(f"{path}:{lineno}: unknown label {raw!r} for {spec.name} "
                    f"(expected one of {list(spec.label_names)} or 0..{spec.num_labels - 1})")


def read_glue_tsv(spec: TaskSpec, path: str | Path) -> datasets.Dataset:
    """Read one GLUE tsv file (official layout) into a Dataset with the hub's columns.

    Fields are split on tabs only, with no quote handling (csv.QUOTE_NONE), as the GLUE files
    contain unbalanced quotes. Columns: `spec.text_keys`, "label", "idx" (row number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{spec.name}: data file not found: {path}")
    fmt = GLUE_TSV_FORMATS[spec.name]
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    start = 0
    if fmt.header is not None:
        if not lines or not lines[0]:
            raise DataError(f"{path}: empty file, expected a header")
        head = [h.strip().lower() for h in lines[0].split("\t")]
        for i, name in fmt.header:
            if not (-len(head) <= i < len(head)) or head[i] != name:
                raise DataError(f"{path}: not a GLUE {spec.name} file: header field {i} should "
                                f"be {name!r}, header is {lines[0]!r}")
        start = 1
    need = max(max(fmt.text_fields), fmt.label_field if fmt.label_field >= 0 else 0) + 1
    texts: list[list[str]] = [[] for _ in fmt.text_fields]
    labels = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        bad = (len(fields) != fmt.num_fields) if fmt.num_fields else len(fields) < need
        if bad:
            if fmt.skip_bad_rows:
                continue
            raise DataError(f"{path}:{lineno}: expected {fmt.num_fields or need} tab-separated "
                            f"fields for {spec.name}, got {len(fields)}")
        for col, i in zip(texts, fmt.text_fields):
            col.append(fields[i])
        labels.append(_parse_label(spec, fields[fmt.label_field], path, lineno))
    data: dict[str, list | np.ndarray] = {key: col for key, col in zip(spec.text_keys, texts)}
    dtype = np.float32 if spec.kind == "regression" else np.int64
    data["label"] = np.asarray(labels, dtype=dtype)
    data["idx"] = np.arange(len(labels), dtype=np.int64)
    return datasets.Dataset.from_dict(data)


def tokenize_glue(spec: TaskSpec, ds: datasets.Dataset, tokenizer, max_seq_length: int
                  ) -> dict[str, np.ndarray]:
    """Tokenise a GLUE Dataset (hub columns) with `Dataset.map`; pad to `max_seq_length`.

    Returns input_ids, attention_mask, token_type_ids int32 [N, L] and labels [N] (int32, or
    float32 for regression). Pairs are truncated "longest_first", as in HF run_glue.
    """
    keys = spec.text_keys

    def encode(batch):
        enc = tokenizer(*[batch[k] for k in keys], truncation=True, max_length=max_seq_length,
                        padding="max_length")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        out["token_type_ids"] = (enc.get("token_type_ids")
                                 or [[0] * len(x) for x in enc["input_ids"]])
        out["labels"] = batch[spec.label_key]
        return out

    if len(ds) == 0:
        empty = np.zeros((0, max_seq_length), np.int32)
        lab = np.zeros((0,), np.float32 if spec.kind == "regression" else np.int32)
        return {"input_ids": empty, "attention_mask": empty.copy(),
                "token_type_ids": empty.copy(), "labels": lab}
    enc = ds.map(encode, batched=True, remove_columns=ds.column_names,
                 desc=f"tokenizing {spec.name}")
    cols = ["input_ids", "attention_mask", "token_type_ids", "labels"]
    out = arrow_to_numpy(enc, cols[:3])
    out["labels"] = arrow_to_numpy(enc, ["labels"], dtype=None)["labels"].astype(
        np.float32 if spec.kind == "regression" else np.int32)
    for k in cols[:3]:
        if out[k].shape != (len(ds), max_seq_length):
            raise DataError(f"{spec.name}: tokenizer returned {k} of shape {out[k].shape}, "
                            f"expected {(len(ds), max_seq_length)}")
    return out

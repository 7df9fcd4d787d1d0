"""SQuAD v1.1: JSON reading, HF run_qa-style features, n-best post-processing, official metric."""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path
from typing import Iterable, Sequence

import datasets
import numpy as np

from .tasks import DataError
from .utils import arrow_to_numpy

__all__ = [
    "read_squad_json", "squad_features", "postprocess_qa", "normalize_answer",
    "exact_match_score", "f1_score", "squad_metrics",
]


def read_squad_json(path: str | Path) -> datasets.Dataset:
    """Read an official SQuAD v1.1 JSON file into a Dataset with the hub's columns
    (id, title, context, question, answers={text: [...], answer_start: [...]}), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"squad: data file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a SQuAD JSON file ({e})") from None
    rows = collections.defaultdict(list)
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(para["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"),
        "context": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": {"text": datasets.Sequence(datasets.Value("string")),
                    "answer_start": datasets.Sequence(datasets.Value("int32"))},
    })
    return datasets.Dataset.from_dict(dict(rows), features=features)


def squad_features(ds: datasets.Dataset, tokenizer, max_seq_length: int = 384,
                   doc_stride: int = 128) -> dict[str, np.ndarray]:
    """Tokenise SQuAD examples into overlapping windows (HF run_qa preprocessing).

    Each example gives one or more features of length `max_seq_length` (question first,
    context truncated "only_second" with `doc_stride` overlap). Returns int32 arrays:
    input_ids, attention_mask, token_type_ids [F, L]; start_positions, end_positions [F]
    (token span of the first gold answer, or the CLS index when it is not inside the window);
    example_index [F] (row of `ds`); offsets [F, L, 2] (character span in the context, -1 for
    question, special and padding tokens).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("SQuAD preprocessing needs a fast tokenizer (offset mappings)")
    pad_on_right = tokenizer.padding_side == "right"
    ctx_id = 1 if pad_on_right else 0

    def prepare(batch, indices):
        questions = [q.lstrip() for q in batch["question"]]
        first, second = questions, batch["context"]
        if not pad_on_right:
            first, second = second, first
        enc = tokenizer(first, second, truncation="only_second" if pad_on_right else "only_first",
                        max_length=max_seq_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding="max_length")
        sample_map = enc["overflow_to_sample_mapping"]
        out = collections.defaultdict(list)
        for i, offsets in enumerate(enc["offset_mapping"]):
            ids = enc["input_ids"][i]
            seq = enc.sequence_ids(i)
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            ctx = [j for j, s in enumerate(seq) if s == ctx_id]
            sample = sample_map[i]
            answers = batch["answers"][sample]
            start = end = cls
            if answers["answer_start"] and ctx:
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                c0, c1 = ctx[0], ctx[-1]
                if offsets[c0][0] <= start_char and offsets[c1][1] >= end_char:
                    start = c0
                    while start + 1 <= c1 and offsets[start + 1][0] <= start_char:
                        start += 1
                    end = c1
                    while end - 1 >= c0 and offsets[end - 1][1] >= end_char:
                        end -= 1
            out["input_ids"].append(ids)
            out["attention_mask"].append(enc["attention_mask"][i])
            out["token_type_ids"].append(enc["token_type_ids"][i] if "token_type_ids" in enc
                                         else [0] * len(ids))
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            out["example_index"].append(indices[sample])
            out["offsets"].append([list(o) if s == ctx_id else [-1, -1]
                                   for o, s in zip(offsets, seq)])
        return dict(out)

    cols = ["input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions",
            "example_index", "offsets"]
    if len(ds) == 0:
        z = np.zeros((0, max_seq_length), np.int32)
        out: dict[str, np.ndarray] = {k: z.copy() for k in cols[:3]}
        out.update({k: np.zeros((0,), np.int32) for k in cols[3:6]})
        out["offsets"] = np.zeros((0, max_seq_length, 2), np.int32)
        return out
    feats = ds.map(prepare, batched=True, with_indices=True, remove_columns=ds.column_names,
                   desc="tokenizing squad")
    out = arrow_to_numpy(feats, cols)
    out["offsets"] = out["offsets"].reshape(len(feats), max_seq_length, 2)
    return out


def postprocess_qa(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                   feature_example_index: np.ndarray, contexts: Sequence[str], *,
                   n_best: int = 20, max_answer_length: int = 30) -> list[str]:
    """Best answer text per example from feature logits (HF run_qa post-processing).

    For every feature the `n_best` highest start and end logits are paired; a pair is kept when
    both tokens lie in the context (offsets >= 0), start <= end and the span has at most
    `max_answer_length` tokens. The answer of an example is the kept pair with the highest
    start + end logit over all its features, cut from the context by the offsets ("" if none).
    """
    start_logits = np.asarray(start_logits, np.float32)
    end_logits = np.asarray(end_logits, np.float32)
    F, L = start_logits.shape
    if end_logits.shape != (F, L) or offsets.shape[:2] != (F, L) or len(feature_example_index) != F:
        raise ValueError(f"inconsistent shapes: start {start_logits.shape}, end "
                         f"{end_logits.shape}, offsets {offsets.shape}, feature_example_index "
                         f"{len(feature_example_index)}")
    answers = [""] * len(contexts)
    if F == 0:
        return answers
    k = min(n_best, L)
    rows = np.arange(F)[:, None]
    s_idx = np.argsort(start_logits, axis=1)[:, ::-1][:, :k]          # [F, k]
    e_idx = np.argsort(end_logits, axis=1)[:, ::-1][:, :k]
    s_ok = offsets[rows, s_idx, 0] >= 0
    e_ok = offsets[rows, e_idx, 0] >= 0
    length = e_idx[:, None, :] - s_idx[:, :, None] + 1                # [F, k, k]
    ok = s_ok[:, :, None] & e_ok[:, None, :] & (length >= 1) & (length <= max_answer_length)
    score = start_logits[rows, s_idx][:, :, None] + end_logits[rows, e_idx][:, None, :]
    score = np.where(ok, score, -np.inf).reshape(F, k * k)
    best = np.argmax(score, axis=1)
    best_score = score[np.arange(F), best]
    best_s = s_idx[np.arange(F), best // k]
    best_e = e_idx[np.arange(F), best % k]
    top = np.full(len(contexts), -np.inf)
    for f in range(F):
        ex = int(feature_example_index[f])
        if best_score[f] > top[ex]:
            top[ex] = best_score[f]
            answers[ex] = contexts[ex][offsets[f, best_s[f], 0]:offsets[f, best_e[f], 1]]
    return answers


# Official SQuAD v1.1 evaluation (evaluate-v1.1.py), same normalisation and scores.

_PUNCT = frozenset(string.punctuation)

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between normalised answers."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred), num_same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_metrics(predictions: Sequence[str], gold_answers: Iterable[Sequence[str]]
                  ) -> dict[str, float]:
    """{"exact_match", "f1"} in percent: mean over examples of the max over gold answers."""
    em = f1 = 0.0
    n = 0
    for pred, golds in zip(predictions, gold_answers, strict=True):
        n += 1
        if not golds:
            continue
        em += max(float(exact_match_score(pred, g)) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    if n == 0:
        return {"exact_match": float("nan"), "f1": float("nan")}
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}

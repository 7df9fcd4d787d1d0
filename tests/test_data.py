"""GLUE data pipeline, batching and metrics (mvp_jax.data)."""

import csv
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from mvp_jax import data as D

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
L = 128


def _rows(path, header: bool):
    """Independent reading of a GLUE tsv: list of dicts (header) or lists of fields."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    if not header:
        return rows
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:]]


# --------------------------------------------------------------------------- task registry


def test_registry_has_every_task():
    glue = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert glue | {"squad"} <= set(D.TASKS)
    assert D.get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert D.get_task("SST-2").name == "sst2" and D.get_task("STS-B").kind == "regression"
    assert D.get_task("stsb").num_labels == 1 and D.get_task("mnli").num_labels == 3
    assert D.get_task("squad").kind == "qa" and D.get_task("squad").max_seq_length == 384
    assert all(D.get_task(t).max_seq_length == 128 for t in glue)


def test_unknown_task_error():
    with pytest.raises(D.DataError, match=r"^unknown task 'sst3'\. Did you mean 'sst2'\?") as e:
        D.get_task("sst3")
    msg = str(e.value)
    assert "'sst3'" in msg and "Did you mean 'sst2'" in msg and "mnli" in msg and "squad" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="squad"):
        D.load_task("squadd", None)


def test_missing_file_error(tmp_path, tok):
    with pytest.raises(D.DataError, match=re.escape(str(tmp_path / "train.tsv"))) as e:
        D.load_task("rte", tok, data_dir=tmp_path)
    assert str(tmp_path / "train.tsv") in str(e.value)
    with pytest.raises(D.DataError, match="dev_mismatched.tsv"):
        (tmp_path / "MNLI").mkdir()
        _write(tmp_path / "MNLI" / "dev_matched.tsv", MNLI_DEV)
        D.load_task("mnli", tok, data_dir=tmp_path, with_train=False)


def test_hub_unreachable_is_a_clear_error(monkeypatch, tok):
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(D.DataError, match="nyu-mll/glue.*data_dir"):
        D.load_task("cola", tok)


# --------------------------------------------------------------------------- offline GLUE files

OFFLINE = {  # task: (dir, has header, text columns, label column)
    "sst2": ("SST-2", True, ["sentence"], "label"),
    "cola": ("CoLA", False, [3], 1),
    "rte": ("RTE", True, ["sentence1", "sentence2"], "label"),
    "stsb": ("STS-B", True, ["sentence1", "sentence2"], "score"),
}


@pytest.mark.parametrize("task", sorted(OFFLINE))
def test_offline_glue_task(task, tok):
    folder, header, text_cols, label_col = OFFLINE[task]
    spec = D.get_task(task)
    td = D.load_task(task, tok, data_dir=SHARED / "glue" / folder, max_train_samples=40,
                     max_eval_samples=25, seed=3)
    assert td.spec is spec and set(td.evals) == {"validation"}
    is_reg = spec.kind == "regression"
    for arrays, n in ((td.train, 40), (td.evals["validation"].features, 25)):
        assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            assert arrays[k].shape == (n, L) and arrays[k].dtype == np.int32
        assert arrays["labels"].shape == (n,)
        assert arrays["labels"].dtype == (np.float32 if is_reg else np.int32)

    def label_of(row):
        raw = row[label_col]
        if is_reg:
            return np.float32(raw)
        return spec.label_names.index(raw) if raw in spec.label_names else int(raw)

    for split, file, arrays, rows_idx in (
            ("train", "train.tsv", td.train, td.train_example_index),
            ("validation", "dev.tsv", td.evals["validation"].features, np.arange(25))):
        rows = _rows(SHARED / "glue" / folder / file, header)
        rows = [rows[i] for i in rows_idx]
        np.testing.assert_array_equal(arrays["labels"], [label_of(r) for r in rows])
        for i in (0, 7, len(rows) - 1):
            texts = [rows[i][c] for c in text_cols]
            ref = tok(*texts, truncation=True, max_length=L, padding="max_length")
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                np.testing.assert_array_equal(arrays[k][i], ref[k])
    ev = td.evals["validation"]
    np.testing.assert_array_equal(ev.labels, ev.features["labels"])
    assert len(ev) == ev.num_examples == 25


def test_train_subsample_is_seeded_and_ordered(tok):
    raw = D.load_raw("rte", "train", SHARED / "glue")   # data_dir may be the GLUE root
    a = D.load_task("rte", tok, data_dir=SHARED, max_train_samples=30, seed=1, with_eval=False)
    b = D.load_task("rte", tok, data_dir=SHARED, max_train_samples=30, seed=1, with_eval=False)
    c = D.load_task("rte", tok, data_dir=SHARED, max_train_samples=30, seed=2, with_eval=False)
    np.testing.assert_array_equal(a.train_example_index, b.train_example_index)
    np.testing.assert_array_equal(a.train["input_ids"], b.train["input_ids"])
    assert not np.array_equal(a.train_example_index, c.train_example_index)
    assert np.all(np.diff(a.train_example_index) > 0) and a.train_example_index[-1] < len(raw)
    assert a.evals == {}
    np.testing.assert_array_equal(a.train["labels"],
                                  np.asarray(list(raw["label"]))[a.train_example_index])


# --------------------------------------------------------------------------- other GLUE layouts

MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")
MNLI_TRAIN = [MNLI_HEAD + "\tlabel1\tgold_label",
              "0\t31193\t31193n\tgovernment\t( ( x ) )\t( y )\t(ROOT x)\t(ROOT y)\t"
              "Conceptually cream skimming has two basic dimensions.\t"
              "Product and geography are what make cream skimming work. \tneutral\tneutral",
              "1\t101457\t101457e\ttelephone\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t"
              "you know during the season \"i guess\t\"You lose the things.\tentailment\tentailment",
              "2\t134793\t134793c\tfiction\t( c )\t( d )\t(ROOT c)\t(ROOT d)\t"
              "One of our number will carry out your instructions.\tA member of my team will "
              "not execute your orders.\tcontradiction\tcontradiction"]
MNLI_DEV = [MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
            "0\t63735\t63735n\tslate\t( p )\t( q )\t(ROOT p)\t(ROOT q)\tThe new rights are nice "
            "enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\t"
            "neutral\tneutral\tneutral",
            "1\t91383\t91383c\tgovernment\t( r )\t( s )\t(ROOT r)\t(ROOT s)\tThis site includes a "
            "list.\tThe Government Executive articles are not available.\tcontradiction\t"
            "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction"]
LAYOUTS = {
    "mnli": ("MNLI", {
        "train.tsv": MNLI_TRAIN, "dev_matched.tsv": MNLI_DEV,
        "dev_mismatched.tsv": [MNLI_DEV[0], MNLI_DEV[2].replace("1\t913", "7\t913")]},
        {"train": [("Conceptually cream skimming has two basic dimensions.",
                    "Product and geography are what make cream skimming work. ", 1),
                   ("you know during the season \"i guess", "\"You lose the things.", 0),
                   ("One of our number will carry out your instructions.",
                    "A member of my team will not execute your orders.", 2)],
         "validation_matched": [("The new rights are nice enough",
                                 "Everyone really likes the newest benefits ", 1),
                                ("This site includes a list.",
                                 "The Government Executive articles are not available.", 2)],
         "validation_mismatched": [("This site includes a list.",
                                    "The Government Executive articles are not available.", 2)]}),
    "qqp": ("QQP", {
        "train.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                      "133273\t213221\t213222\tHow is the life of a math student?\t"
                      "Which level of prepration is enough?\t0",
                      "402555\t536040\t536041\tHow do I control my horny emotions?\t"
                      "How do you control your horniness?\t1",
                      "123\tbroken row with a missing field\t1",
                      "360472\t364011\t490273\tWhat causes stool color to change?\t"
                      "What can cause stool to come out as little balls?\t0"],
        "dev.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                    "201359\t303345\t303346\tWhy are African-Americans so beautiful?\t"
                    "Why are hispanics so beautiful?\t0"]},
        {"train": [("How is the life of a math student?", "Which level of prepration is enough?", 0),
                   ("How do I control my horny emotions?", "How do you control your horniness?", 1),
                   ("What causes stool color to change?",
                    "What can cause stool to come out as little balls?", 0)],
         "validation": [("Why are African-Americans so beautiful?",
                         "Why are hispanics so beautiful?", 0)]}),
    "mrpc": ("MRPC", {
        "train.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                      "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the "
                      "witness \" , of deliberately distorting his evidence .\tReferring to him "
                      "as only \" the witness \" , Amrozi accused his brother of deliberately "
                      "distorting his evidence .",
                      "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain "
                      "to Safeway in 1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in "
                      "1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 ."],
        "dev.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                    "1\t1355540\t1355592\tHe said the foodservice pie business doesn 't fit "
                    "the company 's long-term growth strategy .\t\" The foodservice pie "
                    "business does not fit our long-term growth strategy ."]},
        {"train": [("Amrozi accused his brother , whom he called \" the witness \" , of "
                    "deliberately distorting his evidence .", "Referring to him as only \" the "
                    "witness \" , Amrozi accused his brother of deliberately distorting his "
                    "evidence .", 1),
                   ("Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for "
                    "$ 2.5 billion .", "Yucaipa bought Dominick 's in 1995 for $ 693 million "
                    "and sold it to Safeway for $ 1.8 billion in 1998 .", 0)],
         "validation": [("He said the foodservice pie business doesn 't fit the company 's "
                         "long-term growth strategy .", "\" The foodservice pie business does "
                         "not fit our long-term growth strategy .", 1)]}),
    "qnli": ("QNLI", {
        "train.tsv": ["index\tquestion\tsentence\tlabel",
                      "0\tWhen did the third Digimon series begin?\tUnlike the two seasons "
                      "before it, Digimon Tamers takes a darker approach.\tnot_entailment",
                      "1\tWhich missile batteries often have individual launchers?\tThe missile "
                      "batteries are often dispersed in launchers.\tentailment"],
        "dev.tsv": ["index\tquestion\tsentence\tlabel",
                    "0\tWhat came into force after the new constitution was herald?\tAs of that "
                    "day, the new constitution heralding the Second Republic came into force."
                    "\tentailment"]},
        {"train": [("When did the third Digimon series begin?", "Unlike the two seasons before "
                    "it, Digimon Tamers takes a darker approach.", 1),
                   ("Which missile batteries often have individual launchers?", "The missile "
                    "batteries are often dispersed in launchers.", 0)],
         "validation": [("What came into force after the new constitution was herald?", "As of "
                         "that day, the new constitution heralding the Second Republic came into "
                         "force.", 0)]}),
    "wnli": ("WNLI", {
        "train.tsv": ["index\tsentence1\tsentence2\tlabel",
                      "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a "
                      "hole.\tThe carrot had a hole.\t1",
                      "1\tJohn couldn't see the stage with Billy in front of him because he is "
                      "so short.\tJohn is so short.\t1",
                      "2\tThe police arrested all of the gang members.\tThe police were trying "
                      "to stop the drug trade.\t0"],
        "dev.tsv": ["index\tsentence1\tsentence2\tlabel",
                    "0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to "
                    "be cleaned.\t0"]},
        {"train": [("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                    "The carrot had a hole.", 1),
                   ("John couldn't see the stage with Billy in front of him because he is so "
                    "short.", "John is so short.", 1),
                   ("The police arrested all of the gang members.", "The police were trying to "
                    "stop the drug trade.", 0)],
         "validation": [("The drain is clogged with hair. It has to be cleaned.",
                         "The hair has to be cleaned.", 0)]}),
}


def _write(path, lines):
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_glue_layout_loaders(task, tmp_path, tok):
    folder, files, expected = LAYOUTS[task]
    (tmp_path / folder).mkdir()
    for name, lines in files.items():
        _write(tmp_path / folder / name, lines)
    spec = D.get_task(task)
    a, b = spec.text_keys
    for split, rows in expected.items():
        raw = D.load_raw(task, split, tmp_path)          # GLUE root: finds <TASK>/<file>
        assert list(raw[a]) == [r[0] for r in rows] and list(raw[b]) == [r[1] for r in rows]
        assert list(raw["label"]) == [r[2] for r in rows]
    td = D.load_task(task, tok, data_dir=tmp_path / folder)   # the task directory itself
    assert set(td.evals) == set(spec.eval_splits)
    for split, rows in expected.items():
        arrays = td.train if split == "train" else td.evals[split].features
        np.testing.assert_array_equal(arrays["labels"], [r[2] for r in rows])
        ref = tok([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=L,
                  padding="max_length")
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            assert arrays[k].shape == (len(rows), L) and arrays[k].dtype == np.int32
            np.testing.assert_array_equal(arrays[k], ref[k])


def test_malformed_rows_and_headers(tmp_path):
    _write(tmp_path / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(D.DataError, match=r"train.tsv:2: unknown label 'maybe'"):
        D.load_raw("rte", "train", tmp_path)
    _write(tmp_path / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb"])
    with pytest.raises(D.DataError, match=r"train.tsv:2: expected 4"):
        D.load_raw("rte", "train", tmp_path)
    _write(tmp_path / "train.tsv", ["sentence\tlabel", "x\t1"])   # an SST-2 file read as RTE
    with pytest.raises(D.DataError, match="not a GLUE rte file"):
        D.load_raw("rte", "train", tmp_path)


def test_hub_path_uses_load_dataset(monkeypatch, tok, tmp_path):
    """data_dir=None goes to datasets.load_dataset("nyu-mll/glue", task, split=...)."""
    folder, files, _ = LAYOUTS["mnli"]
    (tmp_path / folder).mkdir()
    for name, lines in files.items():
        _write(tmp_path / folder / name, lines)
    calls = []

    def fake(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return D.load_raw("mnli", split, tmp_path)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    td = D.load_task("mnli", tok, max_train_samples=2, max_eval_samples=1)
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched"),
                     ("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert td.train["input_ids"].shape == (2, L)
    assert {k: len(v) for k, v in td.evals.items()} == {"validation_matched": 1,
                                                        "validation_mismatched": 1}


# --------------------------------------------------------------------------- batching


def _arrays(n):
    return {"x": np.arange(n, dtype=np.int32), "y": np.arange(2 * n, dtype=np.float32).reshape(n, 2),
            "ids": np.tile(np.arange(n, dtype=np.int32)[:, None], (1, 5))}


@pytest.mark.parametrize("n,bs", [(23, 5), (20, 5), (3, 8), (1, 1)])
def test_batches_shapes_weights_and_coverage(n, bs):
    arrays = _arrays(n)
    assert D.num_batches(n, bs) == -(-n // bs) and D.num_batches(n, bs, drop_last=True) == n // bs
    out = list(D.batches(arrays, bs, seed=4, epoch=0))
    assert len(out) == D.num_batches(n, bs)
    seen = []
    for b in out:
        assert b["x"].shape == (bs,) and b["y"].shape == (bs, 2) and b["ids"].shape == (bs, 5)
        assert b["example_weight"].dtype == np.float32 and b["example_weight"].shape == (bs,)
        assert b["x"].dtype == np.int32
        np.testing.assert_array_equal(b["y"][:, 0], 2 * b["x"])     # rows stay together
        seen += list(b["x"][b["example_weight"] == 1])
    assert sorted(seen) == list(range(n))                           # every example once
    pad = n % bs and bs - n % bs
    np.testing.assert_array_equal(out[-1]["example_weight"], [1] * (bs - pad) + [0] * pad)
    assert sum(float(b["example_weight"].sum()) for b in out) == n
    dropped = list(D.batches(arrays, bs, seed=4, drop_last=True))
    assert len(dropped) == n // bs and all(b["example_weight"].all() for b in dropped)


def test_batches_order_per_epoch_and_resume():
    arrays = _arrays(50)
    order = lambda **kw: np.concatenate([b["x"] for b in D.batches(arrays, 7, **kw)])  # noqa: E731
    e0, e1 = order(seed=1, epoch=0), order(seed=1, epoch=1)
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, order(seed=2, epoch=0))
    np.testing.assert_array_equal(e0, order(seed=1, epoch=0))       # deterministic
    np.testing.assert_array_equal(order(shuffle=False)[:50], np.arange(50))
    full = list(D.batches(arrays, 7, seed=1, epoch=1))
    for start in (0, 3, 6, 8):
        resumed = list(D.batches(arrays, 7, seed=1, epoch=1, start=start))
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match=rf"^start=9 outside 0\.\.{len(full)} batches$"):
        list(D.batches(arrays, 7, start=9))
    with pytest.raises(ValueError, match="differ in length"):
        list(D.batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))
    assert list(D.batches({"a": np.zeros((0, 3))}, 4)) == []


def test_bucketed_batches_of_tokenised_pairs_cut_only_padding(tok):
    """RTE sentence pairs (two segments): each bucketed batch keeps every real token of every
    row; what is cut is the tokenizer's padding (pad id, mask 0, segment 0)."""
    td = D.load_task("rte", tok, data_dir=SHARED, max_train_samples=64, seed=0, with_eval=False)
    train = dict(td.train, row=np.arange(64))
    lengths = D.sequence_lengths(train["attention_mask"])
    np.testing.assert_array_equal(lengths, train["attention_mask"].sum(1))  # right padding
    seen, used = [], set()
    for b in D.batches(train, 16, seed=0, epoch=0, bucket_lengths=[32, 64], mega_batch=4):
        Lb, rows = b["input_ids"].shape[1], b["row"][b["example_weight"] > 0]
        assert Lb in (32, 64, L) and lengths[rows].max() <= Lb
        used.add(Lb)
        seen += rows.tolist()
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(b[key], train[key][b["row"], :Lb])
        assert (train["input_ids"][rows, Lb:] == tok.pad_token_id).all()
        assert not train["attention_mask"][rows, Lb:].any()
        assert not train["token_type_ids"][rows, Lb:].any()
    assert sorted(seen) == list(range(64)) and len(used) > 1


# --------------------------------------------------------------------------- metrics


def _evalset(labels):
    return D.EvalSet("validation", {"labels": labels}, labels, np.arange(len(labels)))


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    for task in ("cola", "sst2", "mrpc", "qqp", "mnli", "rte", "qnli", "wnli"):
        spec = D.get_task(task)
        labels = rng.integers(0, spec.num_labels, 300).astype(np.int32)
        logits = rng.normal(size=(300, spec.num_labels)).astype(np.float32)
        logits[:150, 0] += 1.0 * (labels[:150] == 0)                 # some signal
        preds = logits.argmax(-1)
        got = D.evaluate(spec, _evalset(labels), logits)
        assert D.label_metrics(spec, preds, labels) == got  # class indices: the same metrics
        if task == "cola":
            assert set(got) == {"mcc"}
            assert got["mcc"] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, preds), abs=1e-12)
            continue
        assert got["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, preds))
        if task in ("mrpc", "qqp"):
            assert set(got) == {"accuracy", "f1"}
            assert got["f1"] == pytest.approx(sklearn.metrics.f1_score(labels, preds))
        else:
            assert set(got) == {"accuracy"}
    # degenerate cases agree with sklearn too
    y = np.array([0, 1, 1, 0])
    for p in (np.zeros(4, int), y, 1 - y):
        assert D.matthews_corrcoef(p, y) == pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
        assert D.binary_f1(p, y) == pytest.approx(sklearn.metrics.f1_score(y, p, zero_division=0))
    p3, y3 = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    assert D.matthews_corrcoef(p3, y3) == pytest.approx(sklearn.metrics.matthews_corrcoef(y3, p3))


def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 200).astype(np.float32)
    preds = labels + rng.normal(0, 1.5, 200).astype(np.float32)
    ref = {"pearson": scipy.stats.pearsonr(preds, labels)[0],
           "spearman": scipy.stats.spearmanr(preds, labels)[0]}
    for p in (preds, preds[:, None]):
        got = D.evaluate("stsb", _evalset(labels), p)
        assert got == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        D.evaluate("stsb", _evalset(labels), preds[:-1])
    with pytest.raises(ValueError, match="shape"):
        D.evaluate("sst2", _evalset(labels.astype(np.int32)), rng.normal(size=(200, 3)))

"""SQuAD v1.1: features, n-best post-processing and the official metric (mvp_jax.data)."""

import json
import re
import string
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from mvp_jax import data as D

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
DEV = SHARED / "squad_v1.1" / "dev-v1.1.json"
ARTICLES = (0, 5, 17)  # a few dev articles


# ---- Official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim, as the reference ----

def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    message = 'Unanswered question ' + qa['id'] + ' will receive score 0.'
                    print(message, file=sys.stderr)
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))
                prediction = predictions[qa['id']]
                exact_match += metric_max_over_ground_truths(
                    exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(
                    f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}

# ---- end of the official script ----


def hf_prepare_train_features(examples, tokenizer, max_seq_length, doc_stride):
    """HF transformers examples/pytorch/question-answering/run_qa.py, prepare_train_features."""
    pad_on_right = tokenizer.padding_side == "right"
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized_examples = tokenizer(
        examples["question" if pad_on_right else "context"],
        examples["context" if pad_on_right else "question"],
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
        return_offsets_mapping=True, padding="max_length")
    sample_mapping = tokenized_examples.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized_examples.pop("offset_mapping")
    tokenized_examples["start_positions"] = []
    tokenized_examples["end_positions"] = []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized_examples["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized_examples.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tokenized_examples["start_positions"].append(cls_index)
            tokenized_examples["end_positions"].append(cls_index)
        else:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != (1 if pad_on_right else 0):
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != (1 if pad_on_right else 0):
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char
                    and offsets[token_end_index][1] >= end_char):
                tokenized_examples["start_positions"].append(cls_index)
                tokenized_examples["end_positions"].append(cls_index)
            else:
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                tokenized_examples["start_positions"].append(token_start_index - 1)
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                tokenized_examples["end_positions"].append(token_end_index + 1)
    return tokenized_examples


@pytest.fixture(scope="module")
def dev_json():
    return json.loads(DEV.read_text(encoding="utf-8"))


def _aligned(tok, context, start, text, max_tokens=None):
    """Whether the gold span starts and ends on token boundaries of the context (and, with
    max_tokens, spans at most that many tokens)."""
    offs = tok(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts, ends = [o[0] for o in offs], [o[1] for o in offs]
    if start not in starts or start + len(text) not in ends:
        return False
    return max_tokens is None or ends.index(start + len(text)) - starts.index(start) < max_tokens


def _write_squad(path, articles):
    Path(path).write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")


def _gold_logits(ev):
    f = ev.features
    n, L = f["input_ids"].shape
    start = np.full((n, L), -5.0, np.float32)
    end = np.full((n, L), -5.0, np.float32)
    start[np.arange(n), f["start_positions"]] = 5.0
    end[np.arange(n), f["end_positions"]] = 5.0
    return start, end


# ------------------------------------------------------------------------------------- metric

TRICKY = [
    ("The Denver Broncos", "Denver Broncos"), ("a  cat ", "cat"), ("An apple.", "apple"),
    ("the the the", ""), ("Theatre", "atre"), ("anthem", "them"), ("U.S.A.", "USA"),
    ("Saint-Denis", "SaintDenis"), ("  multiple\twhite\nspace ", "multiple white space"),
    ("\"quoted\" (parens) [brackets]", "quoted parens brackets"), ("It's 5%!", "its 5"),
    ("Éclair au café", "éclair au café"), ("an A a", "a"), ("1,000,000", "1000000"),
    ("Denver Broncos Denver", "Broncos Denver Broncos"), ("", ""), ("...", "the"),
    ("THE END", "end"), ("ministry of the interior", "Ministry of Interior"), ("a—b", "a b"),
]


def test_normalization_matches_official():
    for a, b in TRICKY:
        for s in (a, b):
            assert D.normalize_answer(s) == normalize_answer(s), s
        assert D.exact_match_score(a, b) == exact_match_score(a, b), (a, b)
        assert D.f1_score(a, b) == pytest.approx(f1_score(a, b)), (a, b)
        assert D.f1_score(b, a) == pytest.approx(f1_score(b, a)), (a, b)
    assert D.normalize_answer("The  Denver, Broncos!") == "denver broncos"


def test_squad_metrics_match_official(dev_json):
    articles = [dev_json["data"][i] for i in ARTICLES]
    rng = np.random.default_rng(0)
    preds, golds, by_id = [], [], {}
    for art in articles:
        for para in art["paragraphs"]:
            words = para["context"].split()
            for qa in para["qas"]:
                k = int(rng.integers(0, 3))
                g = qa["answers"][0]["text"]
                pred = [g, "the " + g.upper() + ".", " ".join(words[:rng.integers(1, 6)])][k]
                preds.append(pred)
                golds.append([a["text"] for a in qa["answers"]])
                by_id[qa["id"]] = pred
    got = D.squad_metrics(preds, golds)
    ref = official_evaluate(articles, by_id)
    assert got == pytest.approx(ref, abs=1e-9)
    assert 20 < got["exact_match"] < 90


# ------------------------------------------------------------------------------------- reading


def test_read_squad_json(dev_json):
    ds = D.read_squad_json(DEV)
    assert len(ds) == 10570 and len(set(ds["title"])) == 48
    assert ds.column_names == ["id", "title", "context", "question", "answers"]
    qa = dev_json["data"][0]["paragraphs"][0]["qas"][0]
    row = ds[0]
    assert row["id"] == qa["id"] and row["question"] == qa["question"]
    assert row["context"] == dev_json["data"][0]["paragraphs"][0]["context"]
    assert row["answers"]["text"] == [a["text"] for a in qa["answers"]]
    assert row["answers"]["answer_start"] == [a["answer_start"] for a in qa["answers"]]


def test_squad_dev_split_by_article():
    train = D.load_raw("squad_dev_split", "train", SHARED)
    val = D.load_raw("squad_dev_split", "validation", SHARED)
    t_titles, v_titles = set(train["title"]), set(val["title"])
    assert len(t_titles) == 38 and len(v_titles) == 10 and not t_titles & v_titles
    assert len(train) + len(val) == 10570


def test_missing_squad_file(tok):
    with pytest.raises(D.DataError, match="train-v1.1.json"):
        D.load_task("squad", tok, data_dir=SHARED / "squad_v1.1")


def test_hub_path(monkeypatch, tok):
    calls = []

    def fake(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return D.read_squad_json(DEV).select(range(5))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    td = D.load_task("squad", tok, with_train=False)
    assert calls == [("rajpurkar/squad", None, "validation")]
    assert td.evals["validation"].num_examples == 5


# ------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("L,stride", [(384, 128), (128, 32)])
def test_features_match_hf_run_qa(tok, L, stride):
    ds = D.read_squad_json(DEV).select(range(300))
    ours = D.squad_features(ds, tok, L, stride)
    ref = hf_prepare_train_features(ds[:], tok, L, stride)
    n = len(ref["input_ids"])
    assert ours["input_ids"].shape == (n, L) and ours["offsets"].shape == (n, L, 2)
    if L == 128:
        assert n > 400                                   # many contexts overflow
    for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"):
        assert ours[k].dtype == np.int32
        np.testing.assert_array_equal(ours[k], np.asarray(ref[k]), err_msg=k)
    # offsets: only context tokens keep their character span
    is_ctx = (ours["token_type_ids"] == 1) & (ours["attention_mask"] == 1)
    is_ctx &= ours["input_ids"] != tok.sep_token_id
    assert np.array_equal(ours["offsets"][..., 0] >= 0, is_ctx)
    assert np.all(ours["offsets"][~is_ctx] == -1)
    assert np.all(np.diff(ours["example_index"]) >= 0) and ours["example_index"][-1] == 299


def _articles_with_aligned_answers(tok, dev_json):
    out = []
    for i in ARTICLES:
        art = json.loads(json.dumps(dev_json["data"][i]))
        for para in art["paragraphs"]:
            para["qas"] = [qa for qa in para["qas"]
                           if _aligned(tok, para["context"], qa["answers"][0]["answer_start"],
                                       qa["answers"][0]["text"], max_tokens=30)]
        out.append(art)
    return out


@pytest.mark.parametrize("L,stride", [(384, 128), (128, 48)])
def test_gold_logits_give_perfect_scores(tok, dev_json, tmp_path, L, stride):
    articles = _articles_with_aligned_answers(tok, dev_json)
    n_q = sum(len(p["qas"]) for a in articles for p in a["paragraphs"])
    _write_squad(tmp_path / "dev-v1.1.json", articles)
    _write_squad(tmp_path / "train-v1.1.json", articles[:1])
    td = D.load_task("squad", tok, data_dir=tmp_path, max_seq_length=L, doc_stride=stride,
                     max_train_samples=50)
    ev = td.evals["validation"]
    assert ev.num_examples == n_q > 300 and len(ev) >= n_q
    assert set(td.train) == {"input_ids", "attention_mask", "token_type_ids",
                             "start_positions", "end_positions"}
    assert td.train["input_ids"].shape[1] == L and len(np.unique(td.train_example_index)) == 50
    assert D.evaluate("squad", ev, _gold_logits(ev)) == {"exact_match": 100.0, "f1": 100.0}


def test_gold_logits_on_raw_dev_articles(tok, dev_json):
    """Unfiltered: every miss is a gold answer that does not start/end on a token boundary or
    is longer than 30 tokens, and the score equals the official script's on the produced texts."""
    first = dev_json["data"][:2]
    n_q = sum(len(p["qas"]) for a in first for p in a["paragraphs"])
    td = D.load_task("squad", tok, data_dir=SHARED, with_train=False, max_eval_samples=n_q)
    ev = td.evals["validation"]
    start, end = _gold_logits(ev)
    texts = D.postprocess_qa(start, end, ev.offsets, ev.feature_example_index,
                             [e["context"] for e in ev.examples])
    misses = 0
    for text, ex in zip(texts, ev.examples):
        if not any(exact_match_score(text, g) for g in ex["answers"]):
            misses += 1
            ds_row = next(qa for a in first for p in a["paragraphs"] for qa in p["qas"]
                          if qa["id"] == ex["id"])
            gold = ds_row["answers"][0]
            assert not _aligned(tok, ex["context"], gold["answer_start"], gold["text"], 30), ex["id"]
    assert misses < 0.05 * n_q
    got = D.evaluate("squad", ev, (start, end))
    ref = official_evaluate(first, {e["id"]: t for e, t in zip(ev.examples, texts)})
    assert got == pytest.approx(ref)


# ------------------------------------------------------------------------------------- n-best


def test_postprocess_rules():
    context = "zero one two three four five six seven"
    #          0    5   9   13    19   24   29  33
    spans = [(0, 4), (5, 8), (9, 12), (13, 18), (19, 23), (24, 28), (29, 32), (33, 38)]
    L = 12  # [CLS] q [SEP] w0..w7 [SEP]
    offsets = np.full((1, L, 2), -1, np.int32)
    offsets[0, 3:11] = spans
    s = np.full((1, L), -100.0, np.float32)
    e = np.full((1, L), -100.0, np.float32)
    s[0, 0], e[0, 0] = 50, 50           # CLS: not in the context
    s[0, 8], e[0, 4] = 40, 40           # end before start
    s[0, 5], e[0, 7] = 10, 9            # best valid: "two three four"
    s[0, 6], e[0, 6] = 9, 8.5
    post = lambda **kw: D.postprocess_qa(s, e, offsets, np.array([0]), [context], **kw)  # noqa
    assert post() == ["two three four"]
    assert post(max_answer_length=2) == ["two three"]
    assert post(n_best=1) == [""]       # the only pair (CLS, CLS) is invalid
    # two windows of one example: the higher-scoring feature wins
    s2, e2 = np.concatenate([s, s - 1]), np.concatenate([e, e])
    s2[1, 9], e2[1, 10] = 45, 30  # beats (five, seven) = 39 + 30 in the same window
    out = D.postprocess_qa(s2, e2, np.concatenate([offsets, offsets]), np.array([0, 0]), [context])
    assert out == ["six seven"]
    out = D.postprocess_qa(s2, e2, np.concatenate([offsets, offsets]), np.array([0, 1]),
                           [context, context])
    assert out == ["two three four", "six seven"]

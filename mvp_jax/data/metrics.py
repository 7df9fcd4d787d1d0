"""GLUE and SQuAD metrics.

GLUE values are fractions (accuracy 0.91, as sklearn / HF `evaluate`); SQuAD EM and F1 are
percentages (0-100, as the official script).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .squad import postprocess_qa, squad_metrics
from .tasks import TaskSpec, get_task

__all__ = ["accuracy", "binary_f1", "macro_f1", "matthews_corrcoef", "pearson", "spearman",
           "evaluate"]


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(np.mean(preds == labels)) if labels.size else float("nan")


def binary_f1(preds, labels, pos_label: int = 1) -> float:
    """F1 of the positive class (sklearn f1_score, average="binary"); 0 when undefined."""
    p, y = np.asarray(preds) == pos_label, np.asarray(labels) == pos_label
    tp = np.sum(p & y)
    denom = 2 * tp + np.sum(p & ~y) + np.sum(~p & y)
    return float(2 * tp / denom) if denom else 0.0


def macro_f1(preds, labels) -> float:
    """Unweighted mean of the per-class F1 over the classes in ``labels`` or ``preds`` (sklearn
    f1_score, average="macro"; a class never predicted nor present does not count)."""
    preds, labels = np.asarray(preds).ravel(), np.asarray(labels).ravel()
    classes = np.union1d(labels, preds)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([binary_f1(preds, labels, pos_label=c) for c in classes]))


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation (multi-class form, as sklearn); 0 when undefined."""
    preds, labels = np.asarray(preds).ravel(), np.asarray(labels).ravel()
    classes, inv = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    y, p = inv[: len(labels)], inv[len(labels):]
    c = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(c, (y, p), 1)
    t_sum, p_sum = c.sum(1), c.sum(0)
    n, correct = c.sum(), np.trace(c)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(preds, labels) -> float:
    return float(stats.pearsonr(np.asarray(preds, np.float64), np.asarray(labels, np.float64))[0])


def spearman(preds, labels) -> float:
    return float(stats.spearmanr(np.asarray(preds, np.float64), np.asarray(labels, np.float64))[0])


def evaluate(spec: TaskSpec | str, eval_set, predictions) -> dict[str, float]:
    """Score predictions on one EvalSet with the task's own metrics.

    predictions: classification logits [N, C]; regression values [N] or [N, 1]; qa a tuple
    (start_logits [F, L], end_logits [F, L]) over the F features of `eval_set`. N / F must be
    exactly the eval set's size (drop batch padding first).
    Returns cola {"mcc"}; sst2/mnli/qnli/rte/wnli {"accuracy"}; mrpc/qqp {"accuracy", "f1"};
    stsb {"pearson", "spearman"}; squad {"exact_match", "f1"}; your own data (custom_task)
    {"accuracy", "macro_f1"} (classification), {"pearson", "spearman"} (regression).
    """
    spec = get_task(spec)
    if spec.kind == "qa":
        start, end = predictions
        n_feat = len(eval_set.feature_example_index)
        if len(start) != n_feat or len(end) != n_feat:
            raise ValueError(f"{spec.name}: got {len(start)}/{len(end)} rows of start/end logits "
                             f"for {n_feat} features")
        contexts = [ex["context"] for ex in eval_set.examples]
        texts = postprocess_qa(start, end, eval_set.offsets, eval_set.feature_example_index,
                               contexts)
        return squad_metrics(texts, [ex["answers"] for ex in eval_set.examples])
    labels = np.asarray(eval_set.labels)
    preds = np.asarray(predictions)
    if spec.kind == "regression":
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.shape != labels.shape:
            raise ValueError(f"{spec.name}: predictions of shape {preds.shape}, expected "
                             f"{labels.shape} (or [N, 1])")
        return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    if preds.shape != (len(labels), spec.num_labels):
        raise ValueError(f"{spec.name}: logits of shape {preds.shape}, expected "
                         f"{(len(labels), spec.num_labels)}")
    return label_metrics(spec, np.argmax(preds, axis=-1), labels)


def label_metrics(spec: TaskSpec | str, predicted, labels) -> dict[str, float]:
    """A classification task's metrics of predicted class indices against the true ones
    (``evaluate`` after the argmax of the logits): {"mcc"} for CoLA, else {"accuracy"} and the
    task's F1 where it has one."""
    spec = get_task(spec)
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if spec.main_metric == "mcc":
        return {"mcc": matthews_corrcoef(predicted, labels)}
    out = {"accuracy": accuracy(predicted, labels)}
    if "f1" in spec.metrics:
        out["f1"] = binary_f1(predicted, labels)
    if "macro_f1" in spec.metrics:
        out["macro_f1"] = macro_f1(predicted, labels)
    return out

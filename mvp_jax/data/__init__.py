"""GLUE and SQuAD v1.1 pipelines (Hugging Face `datasets`), your own data (CSV, TSV, JSON,
JSON Lines, Parquet or any hub dataset; SQuAD-format JSON for QA), fixed-shape or
length-bucketed batching, and metrics.

    spec = get_task("sst2")
    data = load_task("sst2", tokenizer, data_dir="../shared/data/glue")   # None: from the hub
    for batch in batches(data.train, 32, seed=0, epoch=0): ...
    scores = evaluate(spec, data.evals["validation"], logits)

    own = custom_task("reviews", train_file="train.csv", validation_file="dev.csv",
                      text_columns=["text"], label_column="label")   # or task_from_config(cfg.task)
    data = load_task(own, tokenizer)
"""

from .batching import (
    SEQUENCE_KEYS,
    batch_plan,
    batches,
    bucket_length,
    epoch_permutation,
    num_batches,
    resolve_buckets,
    sequence_lengths,
    take_batch,
)
from .custom import (
    custom_task,
    is_own_data,
    normalize_split,
    read_data_file,
    read_hub_split,
    task_from_config,
)
from .glue import read_glue_tsv, tokenize_glue
from .loading import EvalSet, TaskData, find_local_file, load_raw, load_task
from .metrics import (
    accuracy,
    binary_f1,
    evaluate,
    label_metrics,
    macro_f1,
    matthews_corrcoef,
    pearson,
    spearman,
)
from .squad import (
    exact_match_score,
    f1_score,
    normalize_answer,
    postprocess_qa,
    read_squad_json,
    squad_features,
    squad_metrics,
)
from .tasks import TASKS, DataError, Source, TaskSpec, get_task

__all__ = [
    "TASKS", "TaskSpec", "Source", "DataError", "get_task",
    "custom_task", "task_from_config", "is_own_data", "read_data_file", "read_hub_split",
    "normalize_split",
    "TaskData", "EvalSet", "load_task", "load_raw", "find_local_file",
    "read_glue_tsv", "tokenize_glue", "read_squad_json", "squad_features",
    "batches", "num_batches", "epoch_permutation", "batch_plan", "take_batch",
    "sequence_lengths", "resolve_buckets", "bucket_length", "SEQUENCE_KEYS",
    "evaluate", "label_metrics", "accuracy", "binary_f1", "macro_f1", "matthews_corrcoef", "pearson", "spearman",
    "postprocess_qa", "squad_metrics", "normalize_answer", "f1_score", "exact_match_score",
]

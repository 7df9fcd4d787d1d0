"""Fixed-shape, resumable batching of host numpy arrays."""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

__all__ = ["num_batches", "epoch_permutation", "batches"]


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches in one epoch of `n` rows (the last partial one counts unless `drop_last`)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of epoch `epoch`: a permutation drawn from SeedSequence([seed, epoch])."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0, epoch: int = 0,
            start: int = 0, shuffle: bool = True, drop_last: bool = False
            ) -> Iterator[dict[str, np.ndarray]]:
    """Yield dict batches of exactly `batch_size` rows, from batch index `start` to the end.

    The order is `epoch_permutation(n, seed, epoch)` (or 0..n-1 when not `shuffle`), so a run
    stopped after k batches resumes exactly with `start=k`. The last partial batch is filled by
    repeating the epoch's first row; every batch has "example_weight" float32 [B], 1 for real
    rows and 0 for padding. With `drop_last` the partial batch is skipped.
    """
    arrays = dict(arrays)
    if "example_weight" in arrays:
        raise ValueError("arrays already contain 'example_weight'")
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays differ in length: {sizes}")
    n = next(iter(sizes.values()), 0)
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    total = num_batches(n, batch_size, drop_last=drop_last)
    if not 0 <= start <= total:
        raise ValueError(f"start={start} outside 0..{total} batches")
    for b in range(start, total):
        idx = order[b * batch_size:(b + 1) * batch_size]
        weight = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            weight[len(idx):] = 0.0
            idx = np.concatenate([idx, np.full(batch_size - len(idx), order[0])])
        batch = {k: np.take(np.asarray(v), idx, axis=0) for k, v in arrays.items()}
        batch["example_weight"] = weight
        yield batch

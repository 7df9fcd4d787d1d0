"""Resumable batching of host numpy arrays: fixed-shape, or grouped by length into buckets.

Every batch has exactly ``batch_size`` rows; the order of an epoch is a pure function of
``(seed, epoch)``, so a run stopped after k batches resumes exactly with ``start=k``.

Fixed shape (``bucket_lengths=None``): rows in the order of ``epoch_permutation``, every batch
as long as the arrays (``max_seq_length``).

Length buckets (``bucket_lengths=(16, 32, 64, 128)``), as transformers' ``group_by_length``
(``LengthGroupedSampler``): the epoch's permutation is cut into mega-batches of
``mega_batch * batch_size`` rows, each mega-batch is sorted by length (longest first) and cut
into batches, and the order of all the epoch's batches is shuffled (a second permutation of
``(seed, epoch)``), so similar lengths share a batch while batches stay in random order. Each
batch is then cut to the smallest bucket that holds its longest row: only padding is dropped,
and at most ``len(bucket_lengths)`` shapes are ever compiled. Without shuffling (evaluation) the
rows are sorted by length over the whole split. A row's length is the position of its last
non-zero ``attention_mask`` entry plus one.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence, cast

import numpy as np

from mvp_jax.errors import UserError

__all__ = ["num_batches", "epoch_permutation", "batches", "batch_plan", "take_batch",
           "sequence_lengths", "resolve_buckets", "bucket_length", "SEQUENCE_KEYS"]

# Arrays cut to the batch's bucket length along axis 1 (others are taken whole).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches in one epoch of `n` rows (the last partial one counts unless `drop_last`)."""
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of epoch `epoch`: a permutation drawn from SeedSequence([seed, epoch])."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def sequence_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Per row of ``[N, L]``: the position of the last non-zero entry + 1 (0 if none), int64."""
    m = np.asarray(attention_mask) != 0
    if m.ndim != 2:
        raise ValueError(f"attention_mask must be [N, L], got shape {m.shape}")
    last = m.shape[1] - np.argmax(m[:, ::-1], axis=1)
    return np.where(m.any(axis=1), last, 0).astype(np.int64)


def resolve_buckets(bucket_lengths: Sequence[int], max_length: int) -> tuple[int, ...]:
    """Checked buckets, ``max_length`` appended when the largest is shorter (every row fits).

    Raises ValueError (naming ``data.bucket_lengths``) for an empty, unsorted or out-of-range
    list."""
    b = tuple(int(x) for x in bucket_lengths)
    if not b:
        raise UserError("data.bucket_lengths must not be empty (use null for no bucketing)")
    if min(b) < 1:
        raise UserError(f"data.bucket_lengths must be >= 1, got {list(b)}")
    if any(x >= y for x, y in zip(b, b[1:])):
        raise UserError(f"data.bucket_lengths must be strictly increasing, got {list(b)}")
    if b[-1] > max_length:
        raise UserError(f"data.bucket_lengths must be <= the maximum sequence length "
                         f"({max_length}), got {list(b)}")
    return b if b[-1] == max_length else (*b, int(max_length))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length`` (``buckets`` sorted, the last one fits every row)."""
    i = int(np.searchsorted(np.asarray(buckets), length, side="left"))
    if i == len(buckets):
        raise UserError(f"a sequence of length {length} fits no bucket of {list(buckets)}")
    return int(buckets[i])


def batch_plan(n: int, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
               drop_last: bool = False, lengths: np.ndarray | None = None,
               mega_batch: int = 50) -> list[np.ndarray]:
    """The real row indices of every batch of the epoch (the last may be partial).

    Without ``lengths``: ``epoch_permutation(n, seed, epoch)`` (or 0..n-1 when not ``shuffle``)
    cut into batches. With ``lengths``: grouped by length (see the module docstring)."""
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if lengths is None:
        order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
        cuts = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:
        lengths = np.asarray(lengths)
        if len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} rows")
        if not shuffle:  # the whole split, longest first (stable: ties in row order)
            order = np.argsort(-lengths, kind="stable")
            cuts = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        else:
            if mega_batch < 1:
                raise UserError(f"mega_batch must be >= 1, got {mega_batch}")
            perm = epoch_permutation(n, seed, epoch)
            size = mega_batch * batch_size
            cuts = []
            for m in range(0, n, size):
                rows = perm[m:m + size]
                rows = rows[np.argsort(-lengths[rows], kind="stable")]
                cuts += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
            # only the epoch's very last cut can be partial; drop it before shuffling the order
            if drop_last and cuts and len(cuts[-1]) < batch_size:
                cuts.pop()
            rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 1]))
            return [cuts[i] for i in rng.permutation(len(cuts))]
    if drop_last and cuts and len(cuts[-1]) < batch_size:
        cuts.pop()
    return cuts


def take_batch(arrays: Mapping[str, np.ndarray], idx: np.ndarray, batch_size: int, *,
               fill: int, lengths: np.ndarray | None = None,
               buckets: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Rows ``idx`` as a batch of ``batch_size`` rows (filled with row ``fill``, weight 0) plus
    ``example_weight``; with ``buckets``, the ``SEQUENCE_KEYS`` arrays cut to the bucket of the
    longest real row."""
    weight = np.ones(batch_size, np.float32)
    if len(idx) < batch_size:
        weight[len(idx):] = 0.0
        idx = np.asarray(idx)
        idx = np.concatenate([idx, np.full(batch_size - len(idx), fill, dtype=idx.dtype)])
    L = None
    if buckets is not None:
        real = idx[:int(weight.sum())]
        L = bucket_length(int(cast(np.ndarray, lengths)[real].max()) if len(real) else 0, buckets)
    batch = {}
    for k, v in arrays.items():
        x = np.take(np.asarray(v), idx, axis=0)
        if L is not None and k in SEQUENCE_KEYS:
            x = x[:, :L]
        batch[k] = x
    batch["example_weight"] = weight
    return batch


def batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0, epoch: int = 0,
            start: int = 0, shuffle: bool = True, drop_last: bool = False,
            bucket_lengths: Sequence[int] | None = None, mega_batch: int = 50
            ) -> Iterator[dict[str, np.ndarray]]:
    """Yield dict batches of exactly `batch_size` rows, from batch index `start` to the end.

    The order is `batch_plan(...)` (module docstring), so `start=k` yields exactly the batches
    after the first k. The last partial batch is filled by repeating the epoch's first row
    (with buckets: the batch's own first row, so its length stays); every batch has
    "example_weight" float32 [B], 1 for real rows and 0 for padding. With `drop_last` the
    partial batch is skipped. `bucket_lengths` (checked by `resolve_buckets` against the arrays'
    length, which is appended when missing) needs an "attention_mask" array.
    """
    arrays = dict(arrays)
    if "example_weight" in arrays:
        raise ValueError("arrays already contain 'example_weight'")
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays differ in length: {sizes}")
    n = next(iter(sizes.values()), 0)
    lengths = buckets = None
    if bucket_lengths is not None:
        if "attention_mask" not in arrays:
            raise ValueError("length buckets need an 'attention_mask' array")
        mask = np.asarray(arrays["attention_mask"])
        buckets = resolve_buckets(bucket_lengths, mask.shape[1])
        lengths = sequence_lengths(mask)
    plan = batch_plan(n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                      drop_last=drop_last, lengths=lengths, mega_batch=mega_batch)
    if not 0 <= start <= len(plan):
        raise ValueError(f"start={start} outside 0..{len(plan)} batches")
    for idx in plan[start:]:
        fill = int(idx[0]) if buckets is not None else int(plan[0][0])
        yield take_batch(arrays, idx, batch_size, fill=fill, lengths=lengths, buckets=buckets)

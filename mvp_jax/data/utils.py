"""Small helpers shared by the pipelines."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa

from .tasks import DataError


def arrow_to_numpy(ds: datasets.Dataset, columns, dtype=np.int32) -> dict[str, np.ndarray]:
    """Columns of equal-length (nested) lists -> dense arrays [N, ...] (via Arrow, no Python
    loop). Nested lists are flattened to [N, prod(inner)]; `dtype` None keeps Arrow's type."""
    table = ds.with_format("arrow", columns=list(columns))[:]
    n = table.num_rows
    out = {}
    for col in columns:
        arr = table.column(col).combine_chunks()
        while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) \
                or pa.types.is_fixed_size_list(arr.type):
            arr = arr.flatten()
        flat = arr.to_numpy(zero_copy_only=False)
        if n and flat.size % n:
            raise DataError(f"column {col!r} has rows of different lengths")
        flat = flat.reshape(n, -1) if flat.size != n else flat
        out[col] = flat.astype(dtype) if dtype is not None else flat
    return out

"""Device mesh, parameter partition rules, batch placement and the multi-host start.

One place decides the layout (as in MaxText): partition rules (default
``mvp_jax.models.layout.PARTITION_RULES``, Megatron style) map a parameter path to a
``PartitionSpec`` over the mesh axes ``("data", "model")``; everything they do not match
(biases, LayerNorm, pooler, heads, step, rng) is replicated.

A dimension that the axis size does not divide falls back to replicated. The rules match the end
of a '/'-joined tree path (``re.search``), so they apply unchanged to the scores (which mirror the
prunable kernels' paths), to the optax states (``mu``/``nu`` mirror the ``{"params", "scores"}``
tree) and to the whole ``TrainState``: scores and their optimizer moments take their weights'
layout. Batches are split on ``"data"`` along the example dimension; train batches
``[accum, B, ...]`` keep the micro-batch axis whole.

Multi-host: :func:`initialize_distributed` starts ``jax.distributed`` when the process was
started as one of several; each process then feeds only its own rows of every batch
(:func:`put_batch`, via ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence, cast

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mvp_jax import tree
from mvp_jax.errors import UserError
from mvp_jax.models.layout import MESH_AXES, PARTITION_RULES

PyTree = Any
Rules = Sequence[tuple[str, Sequence[str | None]]]  # (regex on the path, axis per dimension)


# ----------------------------------------------------------------------------------------------
# Multi-host start
# ----------------------------------------------------------------------------------------------


def initialize_distributed() -> bool:
    """Start ``jax.distributed`` if this process is one of several; True when it did (or had).

    Explicit: ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    (e.g. two processes on one machine). Launchers: ``MVP_JAX_DISTRIBUTED=1`` lets jax detect
    the cluster (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes). Otherwise nothing happens
    and the run uses this process's devices only. Must run before any JAX computation.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    num = env.get("JAX_NUM_PROCESSES")
    if env.get("JAX_COORDINATOR_ADDRESS") and num is not None:
        if int(num) <= 1:
            return False
        if "JAX_PROCESS_ID" not in env:
            raise UserError("JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not")
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(num),
                                   int(env["JAX_PROCESS_ID"]))
        return True
    if env.get("MVP_JAX_DISTRIBUTED", "").lower() in ("1", "true", "yes", "auto"):
        jax.distributed.initialize()
        return True
    return False


def is_primary() -> bool:
    """True on the process that logs and writes files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------
# Mesh and partition rules
# ----------------------------------------------------------------------------------------------


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "model")`` mesh over all devices (of every process); ``data=None`` takes
    ``len(devices) // model``. The product must equal the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    model = int(model)
    if model < 1 or n % model:
        raise UserError(f"mesh.model={model} does not divide the {n} available devices")
    data = n // model if data is None else int(data)
    if data * model != n:
        raise UserError(f"mesh.data x mesh.model = {data} x {model} = {data * model}, but "
                         f"there are {n} devices; the mesh must use them all "
                         f"(mesh.data=null takes {n // model})")
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices)


def needs_serial_dispatch(mesh: Mesh) -> bool:
    """True on a CPU mesh of several devices: XLA's CPU collectives rendezvous on a shared
    thread pool, and two programs with collectives in flight at once can starve each other
    (the all-reduce times out). The loop then waits for each program before the next one;
    accelerators order their programs on device streams and keep dispatching ahead."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def _fit(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """``axes`` with every axis that does not divide its dimension replaced by None."""
    fitted = [axis if axis is not None and dim % mesh.shape[axis] == 0 else None
              for dim, axis in zip(shape, axes)]
    while fitted and fitted[-1] is None:
        fitted.pop()
    return P(*fitted)


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh,
                   rules: Rules = PARTITION_RULES) -> P:
    """The ``PartitionSpec`` of the array at ``path``: the first rule whose regex is found in
    ``path`` and whose rank is the array's; replicated when none matches."""
    for pattern, axes in rules:
        if re.search(pattern, path) and len(shape) == len(axes):
            return _fit(axes, shape, mesh)
    return P()


def tree_shardings(params: PyTree, mesh: Mesh, rules: Rules = PARTITION_RULES) -> PyTree:
    """``NamedSharding`` of every leaf of ``params`` (arrays or ``ShapeDtypeStruct``s): params,
    scores, optimizer states or a whole ``TrainState``."""
    return tree.map_with_path(
        lambda path, x: NamedSharding(mesh, partition_spec(path, np.shape(x), mesh, rules)),
        params)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_size: int, micro: bool) -> NamedSharding:
    """Examples split on ``"data"``: dimension 1 of ``[accum, B, ...]`` train batches
    (``micro=True``), dimension 0 of ``[B, ...]`` eval batches. Replicated when ``"data"``
    does not divide ``batch_size``."""
    if batch_size % mesh.shape["data"]:
        return replicated(mesh)
    return NamedSharding(mesh, P(None, "data") if micro else P("data"))


# ----------------------------------------------------------------------------------------------
# Placement
# ----------------------------------------------------------------------------------------------


def _process_slice(sharding: NamedSharding, shape: Sequence[int]) -> tuple[slice, ...]:
    """The block of a global array of ``shape`` held by this process's devices."""
    index_map = cast(dict[Any, tuple[slice, ...]],  # every index is set for a NamedSharding
                     sharding.addressable_devices_indices_map(tuple(shape)))
    out = []
    for d, size in enumerate(shape):
        starts = [idx[d].indices(size)[0] for idx in index_map.values()]
        stops = [idx[d].indices(size)[1] for idx in index_map.values()]
        out.append(slice(min(starts), max(stops)))
    return tuple(out)


def put_global(x, sharding: NamedSharding) -> jax.Array:
    """Place a host value that every process holds whole (the same everywhere)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """``jax.device_put`` of a whole pytree (with one process, exactly that)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree_util.tree_map(put_global, tree, shardings)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Place a global host batch: each process transfers only the rows its devices hold
    (``jax.make_array_from_process_local_data``); with one process, ``jax.device_put``."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        local = x[_process_slice(sharding, x.shape)]
        out[name] = jax.make_array_from_process_local_data(sharding, local, x.shape)
    return out

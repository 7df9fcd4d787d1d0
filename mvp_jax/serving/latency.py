"""Latency tables: what attention heads and FFN neurons cost in ONNX Runtime on one machine, and
the unit budget that makes a model N times faster than the dense one.

A table is measured for one model shape, batch size, sequence length, precision (float32 or
int8 matrices) and ONNX Runtime thread count. It times forward passes of probe models whose
every layer keeps ``h`` heads and no FFN neuron, or ``f`` neurons and no head (random weights:
speed does not depend on their values), side by side with the dense float32 model, and stores

    base = T(0, 0)                     embeddings, LayerNorms, head: what no pruning removes
    A(h) = (T(h, 0) - base) / L        one layer's attention with h heads
    F(f) = (T(0, f) - base) / L        one layer's FFN with f neurons

(medians over interleaved rounds). A model whose layer ``i`` keeps ``(h_i, f_i)`` is predicted
to take ``base + sum_i A(h_i) + F(f_i)``, with ``A`` and ``F`` the non-decreasing least-squares
fits of the measured points (isotonic regression: a unit never makes a model faster; timing noise
does) and linear between them,
and to be ``dense_ms`` / that times faster. Hybrid movement pruning with local Top-v keeps
``int(k H)`` heads and ``int(k F)`` neurons in every layer; ``plan_budget`` returns the largest
kept fraction ``k`` whose predicted speed-up reaches the target.

Tables are cached in the user's cache folder (``cache_dir()``), keyed by the machine, ONNX
Runtime's version and everything above; ``mvp-jax latency-table`` measures them on a serving
machine into a file that ``mvp-jax compress --latency-table FILE`` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from typing import Any, Iterable, Sequence

import numpy as np

from mvp_jax.errors import UserError

FORMAT = "mvp-jax latency table 1"
PRECISIONS = ("float32", "int8")
PROBE_VOCAB = 2048  # the word-embedding gather costs the same from a smaller table


class LatencyError(UserError):
    """A latency table that cannot be read or does not fit the model."""


def cache_dir() -> str:
    """mvp-jax's cache folder: ``$MVP_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/mvp-jax``, else
    ``~/.cache/mvp-jax``."""
    if os.environ.get("MVP_JAX_CACHE_DIR"):
        return os.environ["MVP_JAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mvp-jax")


def machine() -> dict:
    """The CPU this runs on: model name, logical cores, OS and architecture."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "system": platform.system(),
            "arch": platform.machine()}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The dimensions a latency table is valid for."""

    model_type: str
    layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    hidden_act: str

    @classmethod
    def of(cls, config: Any) -> "ModelShape":
        from mvp_jax.models.bert import BertSpec

        spec = BertSpec.from_config(config)
        return cls(spec.model_type, spec.num_hidden_layers, spec.hidden_size,
                   spec.num_attention_heads, spec.intermediate_size, spec.hidden_act)


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per forward pass of one batch (module docstring)."""

    shape: ModelShape
    batch_size: int
    seq_length: int
    precision: str
    threads: int | None  # ONNX Runtime intra-op threads; None: its default (one per core)
    dense_ms: float  # the dense float32 model, the reference of every speed-up
    base_ms: float
    attention_ms: tuple[tuple[int, float], ...]  # (heads, ms per layer), increasing heads
    ffn_ms: tuple[tuple[int, float], ...]  # (neurons, ms per layer), increasing neurons
    machine: dict = dataclasses.field(default_factory=dict)
    onnxruntime: str = ""
    date: str = ""

    @functools.cached_property
    def _fits(self) -> tuple[tuple, tuple]:
        return isotonic(self.attention_ms), isotonic(self.ffn_ms)

    def predict_ms(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """``base + sum_i A(h_i) + F(f_i)`` for a model of these per-layer sizes."""
        if len(heads) != self.shape.layers or len(neurons) != self.shape.layers:
            raise LatencyError(f"per-layer sizes for {len(heads)}/{len(neurons)} layers; the "
                               f"table is for {self.shape.layers}")
        attention, ffn = self._fits
        return self.base_ms + sum(_interp(attention, h) + _interp(ffn, f)
                                  for h, f in zip(heads, neurons))

    def speedup(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """Predicted ``dense_ms / predict_ms(heads, neurons)``."""
        return self.dense_ms / max(self.predict_ms(heads, neurons), 1e-9)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["attention_ms"] = [list(p) for p in self.attention_ms]
        d["ffn_ms"] = [list(p) for p in self.ffn_ms]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        try:
            return cls(shape=ModelShape(**d["shape"]), batch_size=int(d["batch_size"]),
                       seq_length=int(d["seq_length"]), precision=str(d["precision"]),
                       threads=None if d.get("threads") is None else int(d["threads"]),
                       dense_ms=float(d["dense_ms"]), base_ms=float(d["base_ms"]),
                       attention_ms=tuple((int(h), float(t)) for h, t in d["attention_ms"]),
                       ffn_ms=tuple((int(f), float(t)) for f, t in d["ffn_ms"]),
                       machine=dict(d.get("machine") or {}),
                       onnxruntime=str(d.get("onnxruntime", "")), date=str(d.get("date", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyError(f"not a latency table entry ({type(e).__name__}: {e})") from None


def isotonic(points: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    """The non-decreasing sequence closest to ``points``' values in least squares (pool adjacent
    violators), at the same ``x``."""
    blocks: list[list[float]] = []  # [mean, weight]
    for _, y in points:
        blocks.append([float(y), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1), (m2, w2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2]
    values = [m for m, w in blocks for _ in range(int(w))]
    return tuple((x, v) for (x, _), v in zip(points, values))


def _interp(points: Sequence[tuple[int, float]], x: int) -> float:
    """Piecewise-linear value at ``x`` (clamped to the measured range)."""
    xs = [p[0] for p in points]
    return float(np.interp(x, xs, [p[1] for p in points]))


# ----------------------------------------------------------------------------------------------
# The budget
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """A kept fraction of units and what the table predicts for it."""

    keep: float  # prune.final_threshold of hybrid pruning (local Top-v)
    heads: int  # kept in every layer: int(keep * num_heads)
    neurons: int  # kept in every layer: int(keep * intermediate_size)
    predicted_speedup: float
    reachable: bool  # False: no budget reaches the target; this is the fastest sensible one


def kept_units(keep: float, size: int) -> int:
    """``int(keep * size)``, the count local Top-v keeps, the same in float32 (the traced
    threshold of a training step) as in float64."""
    return int(keep * size)


def candidate_fractions(shape: ModelShape) -> list[float]:
    """Kept fractions, one per FFN width ``j`` in 1..F, decreasing: ``(j + 0.5) / F`` (1.0 for
    ``j = F``), away from the edges where float32 and float64 round ``int(k F)`` differently.
    The smallest keeps at least one head per layer."""
    F, H = shape.intermediate_size, shape.num_heads
    out = []
    for j in range(F, 0, -1):
        k = 1.0 if j == F else (j + 0.5) / F
        if int(np.float32(k) * np.float32(F)) != int(k * F) or \
                int(np.float32(k) * np.float32(H)) != int(k * H):
            continue
        if int(k * H) < 1:
            break
        out.append(k)
    return out


def plan_budget(table: LatencyTable, target: float) -> Budget:
    """The largest kept fraction whose predicted speed-up over the dense float32 model is at
    least ``target`` (uniform ``int(k H)`` heads and ``int(k F)`` neurons per layer); when even
    the smallest sensible one (one head per layer) falls short, that one, ``reachable=False``."""
    if not target > 1.0:
        raise LatencyError(f"a speed-up target must be > 1, got {target}")
    s, L = table.shape, table.shape.layers
    best = None
    for k in candidate_fractions(s):
        h, f = kept_units(k, s.num_heads), kept_units(k, s.intermediate_size)
        speedup = table.speedup([h] * L, [f] * L)
        best = Budget(k, h, f, speedup, speedup >= target)
        if best.reachable:
            return best
    if best is None:
        raise LatencyError(f"{s.model_type} with {s.num_heads} heads has no budget")
    return best


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def probe_sizes(shape: ModelShape) -> tuple[list[int], list[int]]:
    """Head counts and FFN widths the table measures (0 and the full size included)."""
    H, F = shape.num_heads, shape.intermediate_size
    heads = sorted({0, 1, 2, *(round(H * q) for q in (0.25, 0.5, 0.75, 1.0))} & set(range(H + 1)))
    neurons = sorted({0, *(round(F * q) for q in (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0))})
    return heads, neurons


def probe_config(config: Any, heads: int, neurons: int) -> Any:
    """``config`` with every layer at ``heads`` and ``neurons`` and a small vocabulary."""
    from mvp_jax.export.compact import with_layer_sizes
    from mvp_jax.models.bert import BertSpec

    L = BertSpec.from_config(config).num_hidden_layers
    cfg = with_layer_sizes(config, [heads] * L, [neurons] * L)
    cfg.vocab_size = min(int(config.vocab_size), PROBE_VOCAB)
    return cfg


def random_params(config: Any, num_labels: int = 2, seed: int = 0) -> dict:
    """Float32 numpy params of the classification model of ``config``: normal(0, 0.02) kernels
    and embeddings, zero biases, LayerNorm scales 1 (no compilation: shapes from ``eval_shape``)."""
    from mvp_jax.models.bert import param_shapes
    from mvp_jax.models.build import build_module
    from mvp_jax.tree import unflatten

    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in param_shapes(build_module(config, "classification", num_labels)).items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "scale":
            flat[path] = np.ones(shape, np.float32)
        elif leaf == "bias":
            flat[path] = np.zeros(shape, np.float32)
        else:
            flat[path] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    return unflatten(flat)


def onnx_bytes(config: Any, precision: str, params: Any | None = None) -> bytes:
    """The serialized ONNX classification model of ``config`` (random weights unless given),
    with int8 matrices for ``precision="int8"``."""
    from mvp_jax.export.onnx import MODEL_FILE, write_onnx

    check_precision(precision)
    params = random_params(config) if params is None else params
    with tempfile.TemporaryDirectory(prefix="mvp-jax-latency-") as tmp:
        write_onnx(tmp, params, config, "classification",
                   quantize="int8" if precision == "int8" else None)
        with open(os.path.join(tmp, MODEL_FILE), "rb") as f:
            return f.read()


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise LatencyError(f"unknown precision {precision!r}; choose one of "
                           f"{', '.join(PRECISIONS)}")


def _session(model: bytes, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def time_sessions(runners: Sequence[Any], rounds: int = 9, min_seconds: float = 0.1
                  ) -> list[float]:
    """Median milliseconds per call of each zero-argument callable: one warm-up call each, then
    ``rounds`` rounds in which every callable runs in turn (so all see the same load), each
    timed over enough calls to last ``min_seconds``."""
    reps = []
    for run in runners:
        run()
        t = time.perf_counter()
        run()
        one = max(time.perf_counter() - t, 1e-6)
        reps.append(max(1, int(np.ceil(min_seconds / one))))
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, run in enumerate(runners):
            t = time.perf_counter()
            for _ in range(reps[i]):
                run()
            samples[i].append(1e3 * (time.perf_counter() - t) / reps[i])
    return [statistics.median(s) for s in samples]


def measure_tables(config: Any, batch_size: int, seq_length: int,
                   precisions: Iterable[str] = PRECISIONS, threads: int | None = None,
                   rounds: int = 9, progress: bool = False) -> list[LatencyTable]:
    """Measure one table per precision on this machine (module docstring): every probe model
    and the dense float32 reference timed side by side on random token ids ``[batch_size,
    seq_length]``."""
    from mvp_jax.export.onnx import require_onnx

    require_onnx()
    import onnxruntime

    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        check_precision(p)
    if batch_size < 1 or seq_length < 2:
        raise LatencyError(f"batch size must be >= 1 and sequence length >= 2, got "
                           f"{batch_size} and {seq_length}")
    shape = ModelShape.of(config)
    if seq_length > int(getattr(config, "max_position_embeddings", seq_length)):
        raise LatencyError(f"sequence length {seq_length} exceeds the model's "
                           f"{config.max_position_embeddings} positions")
    heads, neurons = probe_sizes(shape)
    probes = [(h, 0) for h in heads] + [(0, f) for f in neurons if f]
    rng = np.random.default_rng(0)
    feeds_all = {"input_ids": rng.integers(1, PROBE_VOCAB, (batch_size, seq_length)),
                 "attention_mask": np.ones((batch_size, seq_length), np.int64),
                 "token_type_ids": np.zeros((batch_size, seq_length), np.int64)}
    dense_cfg = probe_config(config, shape.num_heads, shape.intermediate_size)
    models = [("dense", "float32", dense_cfg)] + [
        ((h, f), p, probe_config(config, h, f)) for p in precisions for h, f in probes]
    runners = []
    for n, (_, precision, cfg) in enumerate(models):
        if progress:
            print(f"\rlatency table: building probe {n + 1}/{len(models)}", end="", flush=True)
        session = _session(onnx_bytes(cfg, precision), threads)
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v.astype(np.int64) for k, v in feeds_all.items() if k in wanted}
        runners.append(lambda s=session, x=feeds: s.run(None, x))
    if progress:
        print(f"\rlatency table: timing {len(models)} models at batch {batch_size}, "
              f"{seq_length} tokens", flush=True)
    ms = time_sessions(runners, rounds=rounds)
    dense = ms[0]
    timed = dict(((m[0], m[1]), t) for m, t in zip(models[1:], ms[1:]))
    out = []
    for p in precisions:
        base = timed[((0, 0), p)]
        L = shape.layers
        attention = tuple((h, max(timed[((h, 0), p)] - base, 0.0) / L) for h in heads)
        ffn = tuple((f, max(timed[((0, f), p)] - base, 0.0) / L) for f in neurons)
        out.append(LatencyTable(shape, int(batch_size), int(seq_length), p, threads,
                                dense, base, attention, ffn, machine(),
                                onnxruntime.__version__, date.today().isoformat()))
    return out


# ----------------------------------------------------------------------------------------------
# Files and the cache
# ----------------------------------------------------------------------------------------------


def save_tables(path: str | os.PathLike, tables: Sequence[LatencyTable]) -> None:
    """Write ``tables`` as one JSON file (atomically: a temporary file renamed into place)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    body = json.dumps({"format": FORMAT, "tables": [t.to_dict() for t in tables]}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".latency-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_tables(path: str | os.PathLike) -> list[LatencyTable]:
    """The tables of a file written by ``save_tables`` (``LatencyError`` naming the file when it
    is missing or not such a file)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise LatencyError(f"latency table {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise LatencyError(f"latency table {path} is not readable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LatencyError(f"{path} is not a latency table (written by mvp-jax latency-table)")
    try:
        return [LatencyTable.from_dict(d) for d in doc["tables"]]
    except (LatencyError, TypeError, KeyError) as e:
        raise LatencyError(f"latency table {path}: {e}") from None


def pick_table(tables: Sequence[LatencyTable], shape: ModelShape, batch_size: int,
               precision: str, where: str = "the latency table") -> LatencyTable | None:
    """The table of this model shape, batch size and precision (None when absent); a table of
    another model shape is an error."""
    others = [t for t in tables if t.shape != shape]
    if others and len(others) == len(tables):
        raise LatencyError(f"{where} was measured for another model ({others[0].shape.layers} "
                           f"layers, {others[0].shape.num_heads} heads, "
                           f"{others[0].shape.intermediate_size} neurons); measure one for this "
                           f"model with mvp-jax latency-table")
    for t in tables:
        if t.shape == shape and t.batch_size == batch_size and t.precision == precision:
            return t
    return None


def cache_key(shape: ModelShape, batch_size: int, seq_length: int, precision: str,
              threads: int | None) -> str:
    """The cache file name of a table: a hash of the machine, ONNX Runtime and the settings."""
    import onnxruntime

    text = json.dumps([machine(), onnxruntime.__version__, dataclasses.asdict(shape),
                       batch_size, seq_length, precision, threads], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_tables(config: Any, batch_size: int, seq_length: int, precisions: Sequence[str],
                  threads: int | None = None, cache: str | None = None,
                  progress: bool = False) -> list[LatencyTable]:
    """The tables of this machine from the cache (``cache_dir()/latency``), measured and stored
    on the first call."""
    shape = ModelShape.of(config)
    folder = os.path.join(cache or cache_dir(), "latency")
    paths = {p: os.path.join(folder, cache_key(shape, batch_size, seq_length, p, threads)
                             + ".json") for p in precisions}
    found = {}
    for p, path in paths.items():
        if os.path.isfile(path):
            try:
                found[p] = load_tables(path)[0]
            except LatencyError:
                pass  # a damaged cache entry is measured again
    missing = [p for p in precisions if p not in found]
    if missing:
        for t in measure_tables(config, batch_size, seq_length, missing, threads,
                                progress=progress):
            save_tables(paths[t.precision], [t])
            found[t.precision] = t
    return [found[p] for p in precisions]


__all__ = ["Budget", "FORMAT", "LatencyError", "LatencyTable", "ModelShape", "PRECISIONS",
           "cache_dir", "cached_tables", "candidate_fractions", "isotonic", "kept_units",
           "load_tables",
           "machine", "measure_tables", "onnx_bytes", "pick_table", "plan_budget",
           "probe_sizes", "random_params", "save_tables", "time_sessions"]

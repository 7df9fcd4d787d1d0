"""A run directory: what a run writes there, checking it before any write, atomic JSON, a lock,
reading a run back (``restore_run``: its config and its latest checkpoint's params and
scores, without its data or its optimizer) and exporting it (``export_run``).

A run directory holds exactly these entries (``RUN_ENTRIES``); ``--overwrite`` removes these
and nothing else, so a user's own files beside them are never deleted::

    config.yaml  metrics.jsonl  tb/  checkpoints/  export/  counts.json  eval_results.json
    compact/     (structured granularity: the model without its pruned heads and neurons)
    run.lock     (while a process runs in it)

A directory that holds other files but no run is refused even with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from mvp_jax.errors import MissingFileError, UserError

RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "eval_results.json")
RUN_ENTRIES = (*RUN_MARKERS, "tb", "export", "compact", "counts.json")
LOCK = "run.lock"
RESTORED_FIELDS = ("step", "params", "scores")  # what analysis and export read of a checkpoint


class RunError(UserError):
    """A run that cannot start or continue; the message says why."""


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically: a reader (or a crash) sees the old file or the new one whole."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Located:
    """What a path the user named is: a run directory (``cfg`` is its ``config.yaml``) and/or a
    model directory (``model_dir`` holds ``config.json``: the path itself, or a run's
    ``export/``)."""

    path: str
    model_dir: str | None
    cfg: Any = None  # the run's Config, None when the path is no run

    @property
    def is_run(self) -> bool:
        return self.cfg is not None


def locate(path: str | os.PathLike, *, need_model: bool = True) -> Located:
    """The one resolver of run and model directories, for every command.

    A directory with ``config.yaml`` is a run; a directory with ``config.json`` is a model
    directory; a run stands for its ``export/`` when it has no ``config.json`` of its own. With
    ``need_model``, a missing path, a file, a run without an exported model (not finished) and a
    directory holding no model are ``MissingFileError``s that say what to do."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise MissingFileError(f"{path} is a file; expected a model directory (with config.json) "
                               f"or a run directory")
    cfg = load_run_config(path) if os.path.isfile(os.path.join(path, "config.yaml")) else None
    model_dir = None
    if os.path.isfile(os.path.join(path, "config.json")):
        model_dir = path
    elif os.path.isfile(os.path.join(path, "export", "config.json")):
        model_dir = os.path.join(path, "export")
    if need_model and model_dir is None:
        if cfg is not None:
            raise MissingFileError(f"{path} is a run without an exported model (it has not "
                                   f"finished); export its latest checkpoint with: mvp-jax "
                                   f"export {path} --output-dir DIR, then use DIR")
        raise MissingFileError(f"{path} holds no model: no config.json (a Hugging Face model "
                               f"directory) and no export/ (a run directory)")
    return Located(path, model_dir, cfg)


def holds_run(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(
        os.path.exists(os.path.join(output_dir, m)) for m in RUN_MARKERS)


def foreign_entries(output_dir: str) -> list[str]:
    """Entries of ``output_dir`` that a run does not write (sorted)."""
    ours = {*RUN_ENTRIES, LOCK}
    return sorted(e for e in os.listdir(output_dir)
                  if e not in ours and not (e.endswith(".tmp") and e[:-4] in ours))


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> bool:
    """Check ``output_dir`` before anything is written; returns True when resuming.

    A directory holding another run is refused unless ``resume`` or ``overwrite``; a non-empty
    directory holding no run is refused in every case (``overwrite`` replaces runs only)."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other")
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise RunError(f"output directory {output_dir!r} is a file")
    has_run = holds_run(output_dir)
    if resume:
        if not has_run:
            raise RunError(f"--resume: {output_dir!r} holds no run to resume")
        return True
    if has_run and not overwrite:
        raise RunError(f"output directory {output_dir!r} already holds a run; "
                       "pass --resume to continue it or --overwrite to replace it")
    if not has_run and os.path.isdir(output_dir):
        foreign = foreign_entries(output_dir)
        if foreign:
            raise RunError(f"output directory {output_dir!r} is not empty and holds no run "
                           f"(e.g. {foreign[0]!r}); choose an empty or new directory"
                           + ("" if not overwrite else "; --overwrite replaces runs only"))
    return False


def remove_run_files(output_dir: str) -> None:
    """Delete what a run wrote in ``output_dir`` (``RUN_ENTRIES`` by name), nothing else."""
    for name in RUN_ENTRIES:
        for path in (os.path.join(output_dir, name), os.path.join(output_dir, name + ".tmp")):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """``run.lock`` (host and pid of the owner), created with ``O_EXCL``: one process at a time
    runs in a directory. A lock of a dead process on this host (or an unreadable one) is stale
    and taken over (``_take_over``), safely when several processes race for it."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK)
        self.held = False

    @staticmethod
    def _read(path: str) -> tuple[bytes, int] | None:
        """``(contents, inode)`` of a lock file, None when there is none."""
        try:
            with open(path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return None

    @staticmethod
    def _owner(contents: bytes) -> tuple[str, int] | None:
        """``(host, pid)`` written in a lock, None when unreadable."""
        try:
            info = json.loads(contents)
            return str(info["host"]), int(info["pid"])
        except (ValueError, KeyError, TypeError):
            return None

    def _take_over(self, seen: tuple[bytes, int], who: str) -> None:
        """Remove the stale lock ``seen`` (``_read``) and no other: it is renamed to a unique
        name (atomic: of processes racing for it, one gets it), then checked to be the file
        judged stale; a lock created meanwhile by a winner of the race is put back."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another process took it over first
            return
        if self._read(aside) != seen:  # a live lock, not the one judged stale: put back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            print(f"mvp-jax: warning: taking over the stale lock {self.path} ({who})",
                  file=sys.stderr)
        os.remove(aside)

    def acquire(self) -> RunLock:
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                seen = self._read(self.path)
                if seen is None:  # removed meanwhile: try again
                    continue
                owner = self._owner(seen[0])
                if owner is None or (owner[0] == socket.gethostname() and not _alive(owner[1])):
                    who = "unreadable" if owner is None else f"pid {owner[1]}, no longer running"
                    self._take_over(seen, who)
                    continue
                raise RunError(f"{os.path.dirname(self.path)!r} is in use by another run "
                               f"(pid {owner[1]} on {owner[0]}; lock {self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise RunError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Reading a run back: its config and checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoredRun:
    """A run's config, its model's directory and ``transformers`` config, its latest checkpoint
    (step, params and scores, ``{}`` for a method without learned scores, as numpy arrays) and,
    when asked for, the pretrained model it started from (``mvp_jax.models.Pretrained``)."""

    cfg: Any
    model_path: str
    model_config: Any
    step: int
    params: dict
    scores: dict
    pretrained: Any = None


def load_run_config(run_dir: str):
    """The ``config.yaml`` of a run directory."""
    from mvp_jax.config import load_config

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise MissingFileError(f"{run_dir!r} is not a run directory (no config.yaml)")
    return load_config(path)


def _checkpoints(run_dir: str):
    """A read-only ``CheckpointManager`` of ``run_dir/checkpoints``."""
    from mvp_jax.training.checkpoint import CheckpointManager

    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        raise MissingFileError(f"{run_dir!r} has no checkpoint in {directory}")
    return CheckpointManager(directory, read_only=True)


def checkpoint_steps(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints kept in ``run_dir/checkpoints``, ascending."""
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return []
    with _checkpoints(run_dir) as mngr:
        return mngr.all_steps()


def read_checkpoint(run_dir: str, fields=RESTORED_FIELDS, step: int | None = None) -> dict:
    """The top-level ``fields`` (of ``TrainState``) saved at ``step`` (default: the latest) of a
    run, as numpy arrays; nothing else is read from disk (no optimizer state)."""
    with _checkpoints(run_dir) as mngr:
        return mngr.restore_fields(fields, step)


def restore_run(run_dir: str, pretrained: bool = False) -> RestoredRun:
    """A run's config, model config and latest checkpoint (``RestoredRun``), without loading its
    data or reading its optimizer state; the pretrained weights only with ``pretrained``."""
    from mvp_jax import data
    from mvp_jax.models import load_model_config, load_pretrained, resolve_model_path

    run_dir = os.fspath(run_dir)
    cfg = load_run_config(run_dir)
    saved = read_checkpoint(run_dir)
    path = resolve_model_path(cfg.model.name)
    pre = None
    if pretrained:
        spec = data.task_from_config(cfg.task)
        pre = load_pretrained(path, head=spec.head, num_labels=spec.num_labels)
    return RestoredRun(cfg=cfg, model_path=path, model_config=load_model_config(path),
                       step=int(saved["step"]), params=saved["params"],
                       scores=saved.get("scores") or {}, pretrained=pre)


def export_run(run_dir: str, output_dir: str, *, compressed: str | None = None,
               overwrite: bool = False, format: str = "hf", compact: bool = False,
               quantize: str | None = None) -> dict:
    """Final masks of the latest checkpoint applied (``W * M``), written by
    ``mvp_jax.export.deploy.export_pruned`` (a Hugging Face or ONNX directory, whole or compact) and,
    with ``compressed``, as a compressed file (``mvp_jax.export.compressed``); returns a JSON-ready
    report. Reads the run's config, checkpoint and model config, not the pretrained weights."""
    import jax

    from mvp_jax import data
    from mvp_jax.export import compressed as packed
    from mvp_jax.export import deploy
    from mvp_jax.export.huggingface import check_destination, count_remaining
    from mvp_jax.models import build_module
    from mvp_jax.pruning.pruner import Pruner
    from mvp_jax.training.evaluation import make_eval_step

    deploy.check_request(format, quantize, compact, compressed)  # refused before the work
    check_destination(os.path.abspath(output_dir), overwrite)
    if compressed:
        packed.check_replaceable(os.path.abspath(compressed), overwrite)
    run = restore_run(run_dir)
    spec = data.task_from_config(run.cfg.task)
    # the eval step's W * M, as the run's end computes it: the same bits (XLA's fused product
    # writes +0.0 for a pruned negative weight, the eager one -0.0)
    module = build_module(run.model_config, spec.head, spec.num_labels)
    pruner = Pruner.from_config(run.cfg.prune, module)
    masked = jax.device_get(jax.jit(make_eval_step(module, pruner).mask)(run.params, run.scores))
    deploy.export_pruned(output_dir, masked, run.model_config, spec.head, format=format,
                         compact=compact, quantize=quantize, tokenizer_path=run.model_path,
                         num_labels=spec.num_labels, label_names=spec.label_names or None,
                         overwrite=overwrite)
    counts = count_remaining(masked, pruner.patterns)
    report = {"export": output_dir, "format": format, "compact": compact, "quantize": quantize,
              "step": run.step, "remaining_weights": counts["fraction"]}
    if compressed:
        packed.save_compressed(compressed, masked, run.model_config, spec.head,
                               overwrite=overwrite)
        report["compressed"] = packed.compression_report(compressed)
    return report

"""Orbax checkpoints of the TrainState: save every N steps and at the end, keep the last K,
restore the latest (whole, into a template: resume), or only some of its fields, without a
template (``restore_fields``: params and scores for analysis and export, no optimizer). The step
lives inside the state, never in a folder name.

Sharded and multi-host: every process calls ``save``/``restore`` (orbax writes each array's
shards from the processes that hold them, process 0 the metadata); ``restore`` reads into the
shardings of the template, so a checkpoint written on one mesh (or by several processes)
resumes on another.

A save writes ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` when complete, so a
process killed during a save leaves only the temporary folder: it is reported, removed, and the
previous complete checkpoint is the latest. A complete checkpoint that cannot be read (a
truncated or corrupted file) raises ``CheckpointError`` naming it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Self

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from mvp_jax.errors import MissingFileError
from mvp_jax.models.loading import CheckpointError
from mvp_jax.training.hooks import pause_for_test

_INCOMPLETE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


class _Handler(ocp.StandardCheckpointHandler):
    """orbax's standard handler, with the ``save`` test pause while the files are half written
    (``mvp_jax.training.hooks.pause_for_test``)."""

    async def async_save(self, directory, *args, **kwargs):
        futures = await super().async_save(directory, *args, **kwargs)
        pause_for_test("save")
        return futures


def incomplete_checkpoints(directory: str) -> list[int]:
    """Steps whose save was interrupted (a temporary folder and no complete one), ascending."""
    if not os.path.isdir(directory):
        return []
    steps = {int(m.group(1)) for e in os.listdir(directory) if (m := _INCOMPLETE.match(e))}
    return sorted(s for s in steps if not os.path.isdir(os.path.join(directory, str(s))))


class CheckpointManager:
    """Thin wrapper over ``ocp.CheckpointManager`` saving ``flax`` state dicts."""

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False):
        """``read_only``: a reader (plots, export) beside a run that may be saving: it creates
        nothing and leaves temporary folders alone."""
        self.directory = os.path.abspath(directory)
        for step in incomplete_checkpoints(self.directory):
            print(f"mvp-jax: warning: checkpoint {step} in {self.directory} was not finished "
                  "(the process stopped while saving it); it is skipped", file=sys.stderr)
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        self._handler = _Handler()
        registry.add(None, ocp.args.StandardSave, self._handler)
        registry.add(None, ocp.args.StandardRestore, self._handler)
        # the same files read as a plain PyTree: partial restore (``restore_fields``)
        registry.add(None, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1),
                                                 create=not read_only,
                                                 cleanup_tmp_directories=not read_only),
            handler_registry=registry,
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, state: Any, *, force: bool = True) -> None:
        step = int(jax.device_get(state.step))
        if step in self._mngr.all_steps():
            return
        self._mngr.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                        force=force)
        self._mngr.wait_until_finished()

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no checkpoint in {self.directory}")
        return step

    def _checked(self, step: int, read: Callable[[], Any]) -> Any:
        """``read()``, its failure reported as a ``CheckpointError`` naming the checkpoint."""
        try:
            return read()
        except Exception as e:
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise CheckpointError(
                f"checkpoint {os.path.join(self.directory, str(step))} cannot be read "
                f"(truncated or corrupted?): {type(e).__name__}: {detail}") from e

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restore ``step`` (default: the latest) into the structure, dtypes and shardings of
        ``template``."""
        step = self._step(step)
        template_dict = flax.serialization.to_state_dict(template)
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template_dict)
        # TrainState fields added after a checkpoint was written keep the template's value
        saved = self._saved_fields(step)
        missing = {k: v for k, v in template_dict.items() if saved and k not in saved}
        target = {k: v for k, v in target.items() if k not in missing}
        restored = self._checked(
            step, lambda: self._mngr.restore(step, args=ocp.args.StandardRestore(target)))
        return flax.serialization.from_state_dict(template, {**restored, **missing})

    def restore_fields(self, fields: Sequence[str], step: int | None = None) -> dict:
        """The top-level ``fields`` of the state dict saved at ``step`` (default: the latest), as
        numpy arrays, without a template; nothing else is read from disk (orbax partial
        restore), so params and scores need no optimizer. Fields not saved are left out."""
        step = self._step(step)

        def read():
            saved = self._saved_tree(step)
            item = {k: saved[k] for k in fields if k in saved}
            as_numpy = jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            return self._mngr.restore(step, args=ocp.args.PyTreeRestore(
                item=item, restore_args=as_numpy, partial_restore=True))

        return self._checked(step, read)

    def _saved_tree(self, step: int) -> dict:
        """The metadata tree (one entry per array) of the state dict saved at ``step``."""
        from etils import epath

        meta = self._handler.metadata(epath.Path(self.directory) / str(step) / "default")
        return getattr(meta, "tree", meta)

    def _saved_fields(self, step: int):
        """Top-level fields saved at ``step`` (None when its metadata cannot be read)."""
        try:
            tree = self._saved_tree(step)
        except Exception:  # no readable metadata: restore every field
            return None
        return set(tree) if isinstance(tree, dict) else None

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

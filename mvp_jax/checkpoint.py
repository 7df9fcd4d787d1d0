"""Orbax checkpoints of the TrainState: save every N steps and at the end, keep the last K,
restore the latest. The step lives inside the state, never in a folder name.

Sharded and multi-host: every process calls ``save``/``restore`` (orbax writes each array's
shards from the processes that hold them, process 0 the metadata); ``restore`` reads into the
shardings of the template, so a checkpoint written on one mesh (or by several processes)
resumes on another."""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp


class CheckpointManager:
    """Thin wrapper over ``ocp.CheckpointManager`` saving ``flax`` state dicts."""

    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, state: Any, *, force: bool = True) -> None:
        step = int(jax.device_get(state.step))
        if step in self._mngr.all_steps():
            return
        self._mngr.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                        force=force)
        self._mngr.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restore ``step`` (default: the latest) into the structure, dtypes and shardings of
        ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        template_dict = flax.serialization.to_state_dict(template)
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template_dict)
        # TrainState fields added after a checkpoint was written keep the template's value
        saved = self._saved_fields(step)
        missing = {k: v for k, v in template_dict.items() if saved and k not in saved}
        target = {k: v for k, v in target.items() if k not in missing}
        restored = self._mngr.restore(step, args=ocp.args.StandardRestore(target))
        return flax.serialization.from_state_dict(template, {**restored, **missing})

    def _saved_fields(self, step: int):
        try:
            meta = self._mngr.item_metadata(step)
        except Exception:  # no readable metadata: restore every field
            return None
        tree = getattr(meta, "tree", meta)
        return set(tree) if isinstance(tree, dict) else None

    def close(self) -> None:
        self._mngr.close()

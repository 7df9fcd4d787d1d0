"""Names of the built-in tasks, their aliases and the task kinds, without JAX or datasets.

:mod:`mvp_jax.config` checks ``task.name`` with these at load time; :mod:`mvp_jax.data.tasks`
holds what each task is (``TASKS``, keyed by :data:`NAMES`) and looks names up with
:func:`canonical_task`, so the two never disagree on a name or a message.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from mvp_jax.errors import UserError

# The keys of mvp_jax.data.tasks.TASKS (tested).
NAMES = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "squad",
         "squad_dev_split")
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "squad_v1.1": "squad", "squad1.1": "squad",
           "squad-v1.1": "squad", "squad_v1": "squad", "squad-dev-split": "squad_dev_split"}
KINDS = ("classification", "regression", "qa")  # a task's kind (task.kind of your own data)


def canonical_task(name: str, error: Callable[[str], Exception] = UserError) -> str:
    """The registry's name for ``name``: case-insensitive, aliases resolved ("SST-2" -> "sst2").

    An unknown name raises ``error(message)``; the message suggests the closest name.
    """
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in NAMES:
        return key
    close = difflib.get_close_matches(key, [*NAMES, *ALIASES], n=1, cutoff=0.5)
    hint = f" Did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise error(f"unknown task {name!r}.{hint} Choices: {', '.join(sorted(NAMES))}.")

"""The keys a trainer.* override may set: lightning.Trainer's arguments. A base module (it imports nothing of
tlcli), so that tl_cli/errors.py can suggest a trainer key for a typo."""

from __future__ import annotations

import inspect


def trainer_arguments() -> set[str]:
    """The lightning.Trainer arguments a trainer.* key may set (callbacks and logger have their own groups)."""
    import lightning as L

    return set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "callbacks", "logger"}

"""An explicit `trainer.max_epochs` is honoured as given (docs/configuration.md, "Epochs and optim.min_steps").

optim.min_steps repeats a small train set within each epoch until the run has that many optimizer steps. That
minimum serves the default epoch count: where the command line sets trainer.max_epochs and not optim.min_steps,
the command gets `optim.min_steps=0` appended, so Hydra composes, records (.hydra/overrides.yaml, config.yaml)
and resumes exactly what ran. Presets (experiment=...) that set trainer.max_epochs keep their minimum.
"""

from __future__ import annotations

EPOCHS, MIN_STEPS = "trainer.max_epochs", "optim.min_steps"
NO_MINIMUM = f"{MIN_STEPS}=0"


def _keys_set(args: list[str]) -> set[str]:
    """The config keys the override args set (`key=value`, `+key=`, `++key=`; not `~key` deletions, not flags)."""
    return {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a and not a.startswith(("-", "~"))}


def honour_epochs(args: list[str]) -> list[str]:
    """`args`, with `optim.min_steps=0` appended where they set trainer.max_epochs but not optim.min_steps."""
    keys = _keys_set(args)
    # `++resume=` (what `resume=<run dir>` becomes, also in the ranks Lightning's launcher starts for it): a resumed
    # run keeps its recorded minimum, in every rank
    if EPOCHS in keys and MIN_STEPS not in keys and "resume" not in keys:
        return [*args, NO_MINIMUM]
    return args

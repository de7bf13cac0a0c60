"""data=custom: your own Dataset without editing tlcli. `data.factory=mypkg.mod:make` names a function
`make(cfg, seed) -> RawSplits`, imported from the working directory, a --config-dir, or an installed package.

Only the function the user names on the command line or in their own config is imported: the `_target_`
allow-list of the logger/callbacks groups (tl_cli/config/checks.py) is not widened by it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from tl_cli.data.datasets import RawSplits, register_dataset
from tl_cli.errors import TlcliError

EXAMPLE = "data.factory=mypkg.mod:make (a function make(cfg, seed) returning tl_cli.data.datasets.RawSplits)"


def search_paths() -> list[str]:
    """The working directory and the config dirs given with --config-dir, where a factory module may live."""
    paths = [os.getcwd()]
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
        paths += [s.path for s in sources if s.provider == "command-line" and s.schema == "file"]
    except ValueError:  # not inside a Hydra app (tests, benchmarks): the working directory only
        pass
    return paths


def load_factory(spec: str):
    """The function named `module:function`, with one-line errors for a bad name or a failing import."""
    module_name, _, function = str(spec).partition(":")
    if not module_name or not function:
        raise TlcliError(f"data.factory={spec} is not 'module:function'; use {EXAMPLE}")
    for path in reversed(search_paths()):
        if path not in sys.path and Path(path).is_dir():
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as ex:  # the user's module: any error it raises on import is theirs to see, in one line
        raise TlcliError(
            f"data.factory={spec}: cannot import {module_name} ({type(ex).__name__}: {ex}); put it in the working "
            f"directory or a --config-dir, or install it"
        ) from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise TlcliError(f"data.factory={spec}: {module_name} has no function {function}; use {EXAMPLE}")
    return factory


@register_dataset("custom")
def custom(cfg, seed: int) -> RawSplits:
    """Whatever the user's factory builds, checked to be RawSplits with a train split and 2+ classes."""
    if not cfg.factory:
        raise TlcliError(f"data=custom needs {EXAMPLE}")
    splits = load_factory(cfg.factory)(cfg, seed)
    if not isinstance(splits, RawSplits) or "train" not in splits.datasets:
        raise TlcliError(
            f"data.factory={cfg.factory} returned {type(splits).__name__}, not RawSplits with a train split"
        )
    if len(splits.classes) < 2:
        raise TlcliError(f"data.factory={cfg.factory} gives {len(splits.classes)} class(es); need at least 2")
    return splits

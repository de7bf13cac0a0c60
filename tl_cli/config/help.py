"""What `tlcli train --help` lists (the `${tlcli_help:...}` topics of configs/hydra/default.yaml, via
tl_cli/cli.py help_text): the config groups without tlcli's internal presets, and the composed config with only
the chosen dataset's keys. Kept light: YAML and OmegaConf only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# experiment presets that only the transfer study (docs/study.md, `make study`) and `make source-model` use
INTERNAL_PRESETS = ("study_", "source_")
# data keys that a source's yaml may leave at the schema's default, but every source's data module reads
GENERIC_DATA_KEYS = ("num_workers", "crop_pct", "aug", "val_fraction", "test_fraction")


def config_dirs(root: Any = None) -> list[Path]:
    """The config folders a command composes from: tlcli's own, then any --config-dir (Hydra's file sources)."""
    from tl_cli.config.paths import config_dir

    dirs = [config_dir()]
    sources = root.hydra.runtime.get("config_sources") if root is not None else None
    for source in sources or []:
        path = Path(str(source.get("path", "")))
        if source.get("schema") == "file" and path.is_dir() and path.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(path)
    return dirs


def group_options(group: str, dirs: list[Path]) -> list[str]:
    """A config group's options in those folders, without the internal presets."""
    options = {p.stem for d in dirs for p in (d / group).glob("*.yaml")}
    return sorted(o for o in options if not (group == "experiment" and o.startswith(INTERNAL_PRESETS)))


def _yaml_keys(path: Path) -> set[str]:
    import yaml

    loaded = yaml.safe_load(path.read_text()) or {}
    return {k for k in loaded if k != "defaults"} if isinstance(loaded, dict) else set()


def hidden_data_keys(chosen: str | None, dirs: list[Path], overridden: set[str]) -> set[str]:
    """Data keys of other sources: set by some configs/data/*.yaml but not all, not by the chosen one, not
    generic, and not given on the command line."""
    by_source = {p.stem: _yaml_keys(p) for d in dirs for p in (d / "data").glob("*.yaml")}
    if not by_source or chosen not in by_source:
        return set()
    specific = set().union(*by_source.values()) - set.intersection(*by_source.values())
    return specific - by_source[chosen] - set(GENERIC_DATA_KEYS) - overridden


def config_text(root: Any) -> str:
    """The composed job config as YAML (Hydra's $CONFIG) with the other sources' data keys left out; `$` doubled
    for the help template's string.Template."""
    from omegaconf import OmegaConf

    job = OmegaConf.to_container(root, resolve=False)
    job.pop("hydra", None)
    overrides = [str(o) for o in root.hydra.overrides.task]
    overridden = {
        o.split("=", 1)[0].lstrip("+~").removeprefix("data.") for o in overrides if o.lstrip("+~").startswith("data.")
    }
    data = job.get("data")
    if isinstance(data, dict):
        hidden = hidden_data_keys(root.hydra.runtime.choices.get("data"), config_dirs(root), overridden)
        job["data"] = {k: v for k, v in data.items() if k not in hidden}
    return OmegaConf.to_yaml(job).rstrip("\n").replace("$", "$$")

"""Where tlcli's configs and assets live, for editable and regular installs alike."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tl_cli/
ASSETS_DIR = PACKAGE_DIR / "assets"


def config_dir() -> Path:
    """The config tree: tl_cli/configs in an installed wheel, ./configs in a source checkout."""
    for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"tlcli configs not found next to {PACKAGE_DIR}; reinstall tlcli")


def asset(name: str) -> str:
    """Absolute path of a file shipped in tl_cli/assets (used by the `${asset:...}` resolver)."""
    return str(ASSETS_DIR / name)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from tl_cli.ranks import run_name

    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", asset)
    if not OmegaConf.has_resolver("tlcli_run_name"):  # the run dir's name, the same in every rank
        OmegaConf.register_new_resolver("tlcli_run_name", run_name)

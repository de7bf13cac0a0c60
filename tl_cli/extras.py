"""Optional features and the pip extra that installs each (pyproject.toml [project.optional-dependencies]).

The core install runs `tlcli train|eval|predict|report`. A feature used without its extra stops with one line
naming the extra: `require` checks before the work starts, and `missing_extra` recognises what Hydra raises
when a plugin is absent (its config option does not exist). No tl_cli imports: tl_cli/errors.py prints the line.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class MissingExtra(Exception):
    """A feature used without its extra installed; the message is the whole story (one line)."""


@dataclass(frozen=True)
class Feature:
    usage: str  # what the user asked for, as typed
    packages: str  # the distributions it needs, as the message names them
    extra: str  # `pip install 'tlcli[<extra>]'` installs them
    modules: tuple[str, ...]  # their import names

    def message(self) -> str:
        return f"{self.usage} needs {self.packages}; pip install 'tlcli[{self.extra}]'"


ONNX = Feature("tlcli export format=onnx", "onnx and onnxruntime", "export", ("onnx", "onnxruntime"))
TENSORBOARD = Feature("logger=tensorboard", "tensorboard", "tensorboard", ("tensorboard",))
MLFLOW = Feature("logger=mlflow", "mlflow-skinny", "trackers", ("mlflow",))
WANDB = Feature("logger=wandb", "wandb", "trackers", ("wandb",))
HF = Feature("data=hf", "datasets", "hf", ("datasets",))
WEBDATASET = Feature("data=webdataset", "webdataset", "webdataset", ("webdataset",))
EXPLAIN = Feature("tlcli explain", "grad-cam (pytorch-grad-cam)", "explain", ("pytorch_grad_cam",))


def _plugin(usage: str, package: str, extra: str, *modules: str) -> Feature:
    return Feature(usage, package, extra, (f"hydra_plugins.{package.replace('-', '_')}", *modules))


# Hydra plugins, by the config option each one registers: without the plugin Hydra cannot find the option.
PLUGINS: dict[str, Feature] = {
    "hydra/sweeper/optuna": _plugin("hparams_search=optuna", "hydra-optuna-sweeper", "optuna", "optuna"),
    "hydra/launcher/joblib": _plugin("hydra/launcher=joblib", "hydra-joblib-launcher", "launchers", "joblib"),
    "hydra/launcher/submitit_local": _plugin(
        "hydra/launcher=submitit_local", "hydra-submitit-launcher", "launchers", "submitit"
    ),
    "hydra/launcher/submitit_slurm": _plugin(
        "hydra/launcher=submitit_slurm", "hydra-submitit-launcher", "launchers", "submitit"
    ),
}
# Classes of the logger group (`_target_`) that need an extra.
LOGGER_TARGETS: dict[str, Feature] = {
    "lightning.pytorch.loggers.TensorBoardLogger": TENSORBOARD,
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": TENSORBOARD,
    "lightning.pytorch.loggers.MLFlowLogger": MLFLOW,
    "lightning.pytorch.loggers.mlflow.MLFlowLogger": MLFLOW,
    "lightning.pytorch.loggers.WandbLogger": WANDB,
    "lightning.pytorch.loggers.wandb.WandbLogger": WANDB,
}
# Data sources (data=<name>) that need an extra.
DATA_SOURCES: dict[str, Feature] = {"hf": HF, "webdataset": WEBDATASET}
FEATURES: tuple[Feature, ...] = (ONNX, TENSORBOARD, MLFLOW, WANDB, HF, WEBDATASET, EXPLAIN, *PLUGINS.values())


def require(feature: Feature) -> None:
    """Import the feature's modules; raise MissingExtra naming its extra when one is not installed."""
    for module in feature.modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as ex:
            if ex.name and (module == ex.name or module.startswith(ex.name + ".")):
                raise MissingExtra(feature.message()) from None
            raise
        except ImportError as ex:  # installed but broken: reinstalling the extra is still the fix
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            raise MissingExtra(f"{feature.message()} ({module} fails to import: {first})") from None


def require_targets(group: Mapping[str, Any] | None) -> None:
    """Check the extras of the classes a logger group will instantiate, before any work starts."""
    for node in (group or {}).values():
        target = node.get("_target_", "") if hasattr(node, "get") else ""  # a DictConfig or a dict
        feature = LOGGER_TARGETS.get(str(target))
        if feature is not None:
            require(feature)


def _feature_of(ex: BaseException) -> Feature | None:
    missing_cfg = getattr(ex, "missing_cfg_file", None)  # hydra.errors.MissingConfigException
    if missing_cfg:
        return PLUGINS.get(str(missing_cfg))
    if isinstance(ex, ModuleNotFoundError) and ex.name:
        return next((f for f in FEATURES for m in f.modules if ex.name == m or ex.name.startswith(m + ".")), None)
    return None


def missing_extra(ex: BaseException) -> str | None:
    """The one-line message when `ex` (or its cause) comes from a missing extra, else None."""
    for error in (ex, ex.__cause__):
        if isinstance(error, MissingExtra):
            return str(error)
        feature = _feature_of(error) if error is not None else None
        if feature is not None:
            return feature.message()
    return None

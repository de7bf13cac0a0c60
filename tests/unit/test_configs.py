"""Every config of configs/ composes and fits its schema: each option of each config group (found on disk, so a
new yaml is covered without editing this file), every experiment and hparams_search preset, and the top-level
configs of train, eval, predict and export. Composition and schema only: nothing is built or trained."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from tests.conftest import TLCLI
from tests.conftest import compose as compose_train
from tl_cli.cli import register_help_resolver
from tl_cli.config.checks import ALLOWED_TARGETS, check_config
from tl_cli.config.commands import EvalConfig, ExplainConfig, ExportConfig, PredictConfig, register_command_schemas
from tl_cli.config.help import GENERIC_DATA_KEYS, INTERNAL_PRESETS
from tl_cli.config.paths import config_dir, register_resolvers
from tl_cli.config.schema import TrainConfig, register_schemas
from tl_cli.errors import TlcliError
from tl_cli.transfer.strategies import STRATEGIES

CONFIGS = config_dir()
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONFIGS / group).glob("*.yaml"))]
COMMANDS = {"eval": EvalConfig, "predict": PredictConfig, "export": ExportConfig, "explain": ExplainConfig}


@pytest.fixture
def composed(tmp_path: Path):
    """compose(config_name, overrides) -> (job config, hydra config), as `tlcli <command>` composes them, with
    Hydra's runtime set so `${hydra:...}` interpolations resolve."""
    register_schemas()
    register_command_schemas()
    register_resolvers()
    register_help_resolver()
    before = HydraConfig.instance().cfg

    def run(config_name: str, overrides: list[str]) -> tuple[DictConfig, DictConfig]:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)  # keeps cfg (with its hydra node) as the root of HydraConfig.get()
        job = copy.deepcopy(cfg)
        with open_dict(job):
            del job["hydra"]
        return job, cfg.hydra

    yield run
    HydraConfig.instance().cfg = before


def required_keys(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema) if f.default is MISSING}


def check_hydra(hydra: DictConfig) -> None:
    """The hydra settings tlcli relies on resolve (output folders, help text)."""
    for key in ("run.dir", "sweep.dir", "job.name", "help.header", "help.template"):
        assert OmegaConf.select(hydra, key, throw_on_missing=True), key


def check_train(cfg: DictConfig) -> None:
    """The train schema (types and mandatory keys) once every interpolation is resolved, tlcli's own checks,
    and every `_target_` of the logger and callbacks groups importable."""
    assert not OmegaConf.missing_keys(cfg)
    OmegaConf.resolve(cfg)
    assert isinstance(OmegaConf.to_object(cfg), TrainConfig)
    check_config(cfg)
    assert cfg.strategy.name in {*STRATEGIES, "auto"}
    for group in ("logger", "callbacks"):
        for name, node in (cfg[group] or {}).items():
            if node is not None:
                assert str(node._target_).startswith(ALLOWED_TARGETS), (group, name)
                get_class(node._target_)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes(composed, group: str, option: str) -> None:
    cfg, hydra = composed("train", [f"{group}={option}"])
    check_hydra(hydra)
    assert hydra.runtime.choices[group] == option
    check_train(cfg)


def test_the_groups_are_all_found() -> None:
    """Discovery itself: the groups the train config composes, each with at least one option."""
    expected = {"callbacks", "data", "experiment", "hparams_search", "logger", "model", "optim", "paths"}
    assert set(GROUPS) >= expected | {"strategy", "trainer"}
    assert {o for g, o in OPTIONS if g == "strategy"} == {*STRATEGIES, "auto"}


@pytest.mark.parametrize("command", ["train", *COMMANDS])
def test_top_level_configs_compose(composed, command: str) -> None:
    cfg, hydra = composed(command, [])
    check_hydra(hydra)
    if command == "train":
        check_train(cfg)
        return
    schema = COMMANDS[command]
    assert set(OmegaConf.missing_keys(cfg)) == required_keys(schema)  # ckpt (and predict's inputs) stay ???
    for key in required_keys(schema):
        cfg[key] = "/set/by/the/user"
    assert isinstance(OmegaConf.to_object(cfg), schema)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml")))
def test_eval_composes_every_dataset(composed, option: str) -> None:
    cfg, _ = composed("eval", ["ckpt=/run", f"data={option}"])
    assert cfg.data.name == option
    assert isinstance(OmegaConf.to_object(cfg), EvalConfig)


def test_every_hydra_option_is_used_by_a_top_level_config(composed) -> None:
    used = set()
    for command in ("train", *COMMANDS):
        _, hydra = composed(command, [])
        used |= {f"{group}/{choice}" for group, choice in hydra.runtime.choices.items() if group.startswith("hydra")}
    on_disk = {str(p.relative_to(CONFIGS).with_suffix("")) for p in (CONFIGS / "hydra").rglob("*.yaml")}
    assert on_disk <= used, on_disk - used


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_shows_only_its_own_keys(command: str) -> None:
    result = subprocess.run([str(TLCLI), command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"tlcli {command}: ") and "ckpt: ???" in text
    assert all(f"{key}:" in text for key in (f.name for f in dataclasses.fields(COMMANDS[command])))
    for train_only in ("strategy:", "optim:", "trainer:", "experiment:", "model:", "callbacks:"):
        assert train_only not in text, train_only
    assert ("data: csv, custom, digits, fashion_mnist, hf, image_folder, synthetic, webdataset" in text) == (
        command == "eval"
    )


def test_train_help_lists_the_strategies_and_when_to_use_them() -> None:
    result = subprocess.run([str(TLCLI), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "strategy: auto, extend_finetune, extend_freeze, finetune, freeze, scratch" in result.stdout
    for strategy in STRATEGIES.values():
        assert f"{strategy.name}  " in result.stdout and strategy.when in result.stdout


def _data_keys_in_help(*args: str) -> set[str]:
    """The keys under `data:` in `tlcli train <args> --help`'s config."""
    result = subprocess.run([str(TLCLI), "train", *args, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n== Config ==")[1].splitlines()
    start = lines.index("data:")
    block = itertools.takewhile(lambda line: line.startswith("  "), lines[start + 1 :])
    return {line.split(":")[0].strip() for line in block if not line.startswith(("   ", "  -"))}


def test_train_help_shows_only_the_chosen_datasets_keys() -> None:
    """Each source's own keys (those its configs/data/*.yaml sets and some other source's does not) show only
    under that source, or where the command line sets them; keys every source reads always show."""
    yamls = {p.stem: set(OmegaConf.load(p)) for p in (CONFIGS / "data").glob("*.yaml")}
    for name, keys in yamls.items():
        shown = _data_keys_in_help(f"data={name}")
        assert keys <= shown, keys - shown
        others = set().union(*(k for n, k in yamls.items() if n != name)) - keys - set(GENERIC_DATA_KEYS)
        assert others and not others & shown, others & shown
        assert {"batch_size", "num_workers", "samples_per_class", "aug"} <= shown
    assert "num_classes" in _data_keys_in_help("data=digits", "data.num_classes=3")


def test_train_help_hides_the_internal_presets_and_lists_a_user_configs(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "pets.yaml").write_text("# @package _global_\nseed: 1\n")
    args = [str(TLCLI), "train", "--config-dir", str(tmp_path), "--help"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "\nexperiment: pets, smoke\n" in result.stdout
    assert "study_" not in result.stdout and "source_fashion_mnist" not in result.stdout
    assert any(p.stem.startswith(INTERNAL_PRESETS) for p in (CONFIGS / "experiment").glob("*.yaml"))  # still there


def test_model_timm_brings_the_imagenet_head_lr_and_overrides_still_win() -> None:
    """model=timm sets the ImageNet sources' head LR (README "Defaults for ImageNet sources"); the embedded source
    keeps its own; an explicit optim.lr always wins."""
    from tests.conftest import compose

    assert compose([]).optim.lr == 0.01
    assert compose(["model=timm"]).optim.lr == 0.03
    assert compose(["model=timm", "optim.lr=0.001"]).optim.lr == 0.001
    assert compose(["model=timm", "model.backbone=resnet50"]).model.backbone == "resnet50"


def test_a_test_metric_cannot_be_optimized_without_the_test_pass() -> None:
    check_config(compose_train(["optimized_metric=test/acc"]))  # tested by default: allowed
    with pytest.raises(TlcliError, match="optimized_metric=test/acc needs the test pass; set test=true"):
        check_config(compose_train(["optimized_metric=test/acc", "test=false"]))


@pytest.mark.parametrize(
    ("args", "appended"),
    [
        (["trainer.max_epochs=3"], True),
        (["+trainer.max_epochs=3", "strategy=freeze"], True),
        (["trainer.max_epochs=1,2", "-m"], True),  # every job of the sweep sets it
        (["trainer.max_epochs=3", "optim.min_steps=300"], False),  # both given: the minimum applies
        (["experiment=smoke"], False),  # a preset's epochs keep the preset's minimum
        ([], False),
        (["~trainer.max_epochs"], False),
        # a resumed run keeps its recorded minimum: how a DDP rank that Lightning relaunches sees `resume=`
        (["++resume=/runs/a", "trainer.max_epochs=3"], False),
    ],
)
def test_a_given_max_epochs_turns_the_step_minimum_off(args: list[str], appended: bool) -> None:
    from tl_cli.config.epochs import honour_epochs

    assert honour_epochs(args) == ([*args, "optim.min_steps=0"] if appended else args)

"""strategy=auto: the rule (pure, every branch and boundary), its settings, and that an auto job builds
exactly the network of the strategy it chose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose
from tl_cli.config.schema import AutoConfig
from tl_cli.errors import TlcliError
from tl_cli.run.auto import trained_config
from tl_cli.transfer.auto import TABLE, chance_corrected, check_settings, decide, subsample

CHANCE = 0.1  # 10 balanced classes


@pytest.mark.parametrize(
    ("per_class", "acc_source", "expected"),
    [
        (10, 0.95, "freeze"),  # small + similar
        (500, 0.95, "finetune"),  # large + similar
        (10, 0.50, "extend_freeze"),  # small + dissimilar
        (500, 0.50, "extend_finetune"),  # large + dissimilar
    ],
)
def test_the_classic_table(per_class: int, acc_source: float, expected: str) -> None:
    chosen, rule = decide(per_class, acc_source, acc_random=0.30, chance=CHANCE)
    assert chosen == expected
    assert rule.endswith(f"-> {expected}")
    assert ("large data" if per_class >= 100 else "small data") in rule
    assert ("dissimilar task" if acc_source < 0.9 else "similar task") in rule


@pytest.mark.parametrize("acc_random", [0.95, 0.94, 0.99])  # gain 0, +0.01 (< min_gain), negative
def test_scratch_when_the_source_features_are_no_better_than_random(acc_random: float) -> None:
    for per_class in (5, 5000):
        chosen, rule = decide(per_class, 0.95, acc_random, CHANCE, min_gain=0.02)
        assert chosen == "scratch" and "< min_gain 0.02" in rule


def test_boundaries_are_inclusive_and_thresholds_are_used() -> None:
    # exactly large_min_per_class is large; exactly min_gain is enough; exactly the bar is similar
    assert decide(100, 0.52, 0.50, 0.0, large_min_per_class=100, min_gain=0.02, similar_min_score=0.52)[0] == (
        "finetune"
    )
    assert decide(99, 0.52, 0.50, 0.0, large_min_per_class=100, min_gain=0.02, similar_min_score=0.52)[0] == "freeze"
    assert decide(99, 0.52, 0.50, 0.0, large_min_per_class=100, min_gain=0.03, similar_min_score=0.5)[0] == "scratch"
    assert decide(99, 0.52, 0.50, 0.0, large_min_per_class=100, min_gain=0.0, similar_min_score=0.53)[0] == (
        "extend_freeze"
    )
    assert decide(3, 0.52, 0.50, 0.0, large_min_per_class=3, min_gain=0.0, similar_min_score=0.53)[0] == (
        "extend_finetune"
    )
    assert set(TABLE.values()) == {"freeze", "finetune", "extend_freeze", "extend_finetune"}


def test_similarity_is_chance_corrected() -> None:
    assert chance_corrected(1.0, 0.5) == 1.0 and chance_corrected(0.5, 0.5) == 0.0
    assert chance_corrected(0.75, 0.5) == pytest.approx(0.5)
    assert chance_corrected(1.0, 1.0) == 0.0  # one class only: no information
    # 0.85 accuracy: similar among 10 balanced classes (0.833), not for a binary task (0.7)
    assert decide(10, 0.85, 0.5, 0.1)[0] == "freeze"
    assert decide(10, 0.85, 0.5, 0.5)[0] == "extend_freeze"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("min_gain", -0.1, "strategy.auto.min_gain=-0.1 must be between 0 and 1"),
        ("similar_min_score", 1.5, "strategy.auto.similar_min_score=1.5 must be between 0 and 1"),
        ("large_min_per_class", 0, "strategy.auto.large_min_per_class=0 must be a positive integer"),
        ("probe_max_train", -5, "strategy.auto.probe_max_train=-5 must be a positive integer"),
    ],
)
def test_settings_out_of_range(key: str, value: float, needle: str) -> None:
    settings = OmegaConf.structured(AutoConfig)
    check_settings(settings)  # the defaults are valid
    settings[key] = value
    with pytest.raises(TlcliError, match=needle.replace(".", r"\.")):
        check_settings(settings)


def test_probe_subsample_is_stratified_seeded_and_capped() -> None:
    labels = np.repeat(np.arange(4), [100, 100, 100, 700])
    keep = subsample(labels, 100, 4, seed=1, split="train")
    assert len(keep) == 100 and np.array_equal(keep, subsample(labels, 100, 4, seed=1, split="train"))
    assert np.bincount(labels[keep]).tolist() == [10, 10, 10, 70]
    assert len(subsample(labels, 5000, 4, seed=1, split="train")) == 1000
    with pytest.raises(TlcliError, match="probe_max_val=3 is below the 4 classes"):
        subsample(labels, 3, 4, seed=1, split="val")


def test_an_auto_run_dir_is_rebuilt_with_the_strategy_it_chose(tmp_path: Path) -> None:
    """eval/predict/export read the run's .hydra config, which says strategy=auto: summary.json names the choice."""
    from tl_cli.run.trained import architecture
    from tl_cli.transfer.auto import preset

    config = compose(["strategy=auto"])
    preset_block = {k: v for k, v in OmegaConf.to_container(preset("extend_freeze")).items() if k != "auto"}
    (tmp_path / "summary.json").write_text(json.dumps({"strategy_auto": {"preset": preset_block}}))
    assert architecture(trained_config(config, tmp_path), 10)["hidden_dims"] == [256]
    assert architecture(config, 10)["hidden_dims"] == []  # what the saved config alone would say
    (tmp_path / "summary.json").unlink()
    with pytest.raises(TlcliError, match="strategy=auto run without a finished summary.json"):
        trained_config(config, tmp_path)
    plain = compose(["strategy=freeze"])
    assert trained_config(plain, tmp_path) is plain


def test_auto_builds_exactly_the_chosen_strategys_network() -> None:
    """method=rule, same seed: the auto job's network, trainable set and optimizer settings are the chosen one's."""
    from tl_cli.run.training import backbone_kwargs
    from tl_cli.run.training import build_job as build
    from tl_cli.transfer.auto import choose

    overrides = ["data.samples_per_class=5", "data.augment=false"]
    cfg = compose(["strategy=auto", "strategy.auto.method=rule", *overrides])
    resolved, record = choose(cfg, backbone_kwargs(cfg))  # what tl_cli/run/auto.py's fit then trains
    auto_job = build(resolved)
    assert record["chosen"] in ("freeze", "finetune", "extend_freeze", "extend_finetune", "scratch")
    assert record["samples_per_class"] == 5 and record["probe_train"] == 50
    assert 0.0 <= record["probe_acc_random"] <= 1.0 and 0.0 <= record["probe_acc_source"] <= 1.0
    assert record["gain"] == pytest.approx(record["probe_acc_source"] - record["probe_acc_random"], abs=1e-5)
    chosen_job = build(compose([f"strategy={record['chosen']}", *overrides]))
    assert auto_job.strategy == chosen_job.strategy and chosen_job.auto is None
    assert auto_job.net.param_counts() == chosen_job.net.param_counts()
    a, b = auto_job.net.state_dict(), chosen_job.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same init: build seeds after the probe
    assert auto_job.module.backbone_lr_mult == chosen_job.module.backbone_lr_mult
    assert auto_job.module.hparams["config"]["strategy"]["name"] == record["chosen"]  # checkpoints rebuild it

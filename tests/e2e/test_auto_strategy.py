"""`tlcli train strategy=auto` end to end. method=rule: it measures, logs and records its choice, then trains the
chosen strategy's network; a random source must give scratch. method=race (tests/e2e/test_race.py). Bad settings
are one-line errors."""

from __future__ import annotations

import pytest

from tests.conftest import assert_one_line_error, compose, run_dir_of, summary_of

CHOICES = ("freeze", "finetune", "extend_freeze", "extend_finetune", "scratch")
FIGURES = ("samples_per_class", "probe_acc_source", "probe_acc_random", "gain", "chance", "seconds")
THRESHOLDS = {"large_min_per_class": 100, "min_gain": 0.02, "similar_min_score": 0.8}


@pytest.mark.slow  # strategy=auto's probes on digits
def test_auto_on_the_embedded_default(tlcli) -> None:
    """Embedded Fashion-MNIST source -> digits (10 per class, one epoch)."""
    overrides = ["data.samples_per_class=10", "trainer.max_epochs=1"]
    result = tlcli("train", "strategy=auto", "strategy.auto.method=rule", *overrides)
    run_dir = run_dir_of(result)
    assert "strategy=auto chose " in result.stdout + result.stderr
    summary = summary_of(run_dir)
    assert summary["strategy"] == "auto"
    auto = summary["strategy_auto"]
    assert auto["method"] == "rule" and auto["chosen"] in CHOICES and auto["rule"].endswith(f"-> {auto['chosen']}")
    assert all(isinstance(auto[k], (int, float)) for k in FIGURES)
    assert auto["samples_per_class"] == 10 and auto["probe_train"] == 100
    assert 0 <= auto["probe_acc_random"] <= 1 and 0 <= auto["probe_acc_source"] <= 1
    assert {k: auto[k] for k in THRESHOLDS} == THRESHOLDS
    # the network is the chosen strategy's own: its parameter counts, and a run dir eval/predict can load
    from tl_cli.run.trained import load_model
    from tl_cli.run.training import build_job as build

    expected = build(compose([f"strategy={auto['chosen']}", *overrides])).net.param_counts()
    assert summary["params"] == expected
    assert load_model(str(run_dir)).arch["hidden_dims"] == auto["preset"]["extension"]["hidden_dims"]


def test_a_random_source_gives_scratch(tlcli) -> None:
    """model=tiny has model.weights=null: the "source" is the seeded random init itself, so its features are
    exactly the reference's (gain 0.0, not a noisy small number) and auto must fall back to scratch."""
    result = tlcli("train", "strategy=auto", "strategy.auto.method=rule", "experiment=smoke", "trainer.max_epochs=1")
    summary = summary_of(run_dir_of(result))
    auto = summary["strategy_auto"]
    assert auto["chosen"] == "scratch" and auto["gain"] == 0.0
    assert auto["probe_acc_source"] == auto["probe_acc_random"]
    assert summary["strategy"] == "auto" and summary["weights"] == "random init"
    assert summary["params"]["frozen"] == 0


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("strategy.auto.min_gain=-0.1", ["strategy.auto.min_gain=-0.1", "between 0 and 1"]),
        ("strategy.auto.method=vote", ["strategy.auto.method", "'vote'", "race, rule"]),
        ("strategy.auto.race_fraction=1.5", ["strategy.auto.race_fraction=1.5", "between 0 and 1"]),
        ("strategy.auto.prior=best", ["strategy.auto.prior", "'best'", "extend_finetune"]),
        ("strategy.auto.scratch_lr_mult=0", ["strategy.auto.scratch_lr_mult=0", "> 0"]),
        ("strategy.auto.frozen_at=end", ["strategy.auto.frozen_at", "'end'", "full, race"]),
        ("strategy.auto.confirm_fraction=1", ["strategy.auto.confirm_fraction=1", "[0, 1)"]),
    ],
)
def test_bad_auto_setting_is_one_line(tlcli, override: str, fragments: list[str]) -> None:
    result = tlcli("train", "strategy=auto", "experiment=smoke", override)
    assert_one_line_error(result, *fragments)

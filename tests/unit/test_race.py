"""strategy=auto's race, its pure parts: candidates, the val noise, the pick and its tie rule, the saved record;
and the study's scorecards (auto against every constant strategy)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tl_cli.run.race import Race, Score, pick, preference, trainable_candidates, val_noise


def test_scratch_races_only_with_enough_train_images_per_class() -> None:
    assert trainable_candidates(49, 50) == ["finetune", "extend_finetune"]
    assert trainable_candidates(50, 50) == ["finetune", "extend_finetune", "scratch"]


def test_val_noise_is_the_binomial_standard_error_with_a_floor() -> None:
    assert val_noise(0.7, 600) == pytest.approx(math.sqrt(0.7 * 0.3 / 600))
    assert val_noise(1.0, 50) == pytest.approx(1 / 50)  # a perfect score is still one image from the next


def test_pick_takes_the_best_beyond_the_noise() -> None:
    chosen, why = pick({"finetune": 0.70, "extend_finetune": 0.80}, 600, 1.0, "finetune")
    assert chosen == "extend_finetune" and why.startswith("best val acc (extend_finetune 0.800, finetune 0.700")


def test_a_tie_goes_to_the_prior_then_the_preference_order() -> None:
    scores = {"freeze": 0.75, "finetune": 0.745, "extend_finetune": 0.76}  # se at 0.76 over 600: 0.0174
    chosen, why = pick(scores, 600, 1.0, "finetune")
    assert chosen == "finetune" and "finetune, extend_finetune, freeze tied within 1 se (0.017)" in why
    assert pick(scores, 600, 1.0, "freeze")[0] == "freeze"
    assert pick(scores, 600, 0.0, "finetune")[0] == "extend_finetune"  # tie_se=0: the best alone
    assert preference("extend_freeze") == ["extend_freeze", "finetune", "extend_finetune", "freeze", "scratch"]


def test_the_race_record_reads_back(tmp_path) -> None:
    race = Race(600, 60, 10, 3, {"finetune": Score(0.7, 3, 90, 12.5, "race", "x.ckpt")}, chosen="finetune", why="w")
    race.save(tmp_path / "race.json")
    assert Race.load(tmp_path / "race.json") == race and race.continues
    frozen = Race(600, 60, 10, 3, {"freeze": Score(0.7, 10, 300, 1.0, "proxy", full_val_acc=0.8)}, chosen="freeze")
    assert not frozen.continues  # a frozen pick trains in the run dir from the start
    looked = Race(600, 60, 10, 1, {"finetune": Score(0.9, 3, 90, 5.0, "second look", "x.ckpt")}, chosen="finetune")
    assert looked.continues  # it won the second look: it continues from where that stopped


def test_scorecards_score_auto_and_every_constant_on_the_same_cells() -> None:
    from tl_cli.reporting.study import AutoRun, Cell, scorecards

    class _Group:  # a strategy's runs at its chosen LR: (mean, std, seeds) of test acc
        def __init__(self, mean: float) -> None:
            self.mean = mean

        def stat(self, metric: str):
            return (self.mean, 0.001, 3)

    from tl_cli.reporting.study import Choice

    def cell(tests: dict[str, float], picks: list[str]) -> Cell:
        c = Cell("d", "b", "w", 10, {s: Choice(s, 0.01, _Group(m), 5) for s, m in tests.items()})
        c.auto_runs = [AutoRun("race", p, tests[p] - 0.01) for p in picks]
        return c

    cells = [
        cell({"freeze": 0.70, "finetune": 0.80}, ["finetune", "finetune"]),
        cell({"freeze": 0.90, "finetune": 0.85}, ["finetune", "freeze"]),
    ]
    cards = {c.name: c for c in scorecards(cells)}
    race = cards["auto (race)"]
    assert (race.picks, race.hits) == (4, 3)
    assert race.mean_regret == pytest.approx((0 + 0 + 5 + 0) / 4) and race.worst_regret == pytest.approx(5)
    assert race.own_minus_best == pytest.approx((-1 - 1 - 6 - 1) / 4)
    assert (cards["always finetune"].hits, cards["always finetune"].mean_regret) == (1, pytest.approx(2.5))
    assert (cards["always freeze"].hits, cards["always freeze"].mean_regret) == (1, pytest.approx(5.0))


def test_scratch_races_at_its_own_lr_and_the_others_at_optim_lr(tmp_path) -> None:
    """scratch (every weight from random init) trains at optim.lr x scratch_lr_mult, in the race and when it
    continues; the transfer candidates at optim.lr; the frozen features go to the race's own cache."""
    from tests.conftest import compose
    from tl_cli.run.race import _config_for
    from tl_cli.rundir import RunDir

    cfg = compose(["strategy=auto", "optim.lr=0.03", "strategy.auto.scratch_lr_mult=0.25"])
    run = RunDir(tmp_path)
    scratch, finetune = _config_for(cfg, "scratch", run), _config_for(cfg, "finetune", run)
    assert scratch.strategy.name == "scratch" and scratch.optim.lr == pytest.approx(0.0075)
    assert finetune.strategy.name == "finetune" and finetune.optim.lr == pytest.approx(0.03)
    assert cfg.optim.lr == 0.03 and scratch.strategy.auto.scratch_lr_mult == 0.25  # the run's config is untouched
    assert finetune.data.feature_cache_dir == str(tmp_path / "auto" / "feature_cache")


def test_a_race_saved_by_the_previous_race_layout_races_again(tmp_path) -> None:
    """race v2's race.json (leader, final; no steps) cannot be continued by this race: it reads as None."""
    import json

    old = {"val_images": 10, "val_min_per_class": 5, "train_min_per_class": 5, "race_epochs": 3, "leader": "finetune",
           "scores": {"finetune": {"val_acc": 0.5, "epochs": 3, "seconds": 1.0, "stage": "race"}}}  # fmt: skip
    (tmp_path / "race.json").write_text(json.dumps(old))
    assert Race.load(tmp_path / "race.json") is None


def test_a_saved_race_is_reused_only_by_its_own_config_or_a_resume(tmp_path) -> None:
    """A rerun into the same run dir under other settings races again instead of continuing the old pick."""
    from tl_cli.run.race import saved_race

    path, leader_ckpt = tmp_path / "race.json", tmp_path / "race.ckpt"
    leader_ckpt.write_bytes(b"x")
    assert saved_race(path, "abc", None) is None  # nothing raced yet
    scores = {"finetune": Score(0.7, 3, 90, 1.0, "race", str(leader_ckpt))}
    Race(100, 10, 10, 3, scores, chosen="finetune", config_sha="abc").save(path)
    assert saved_race(path, "abc", None).chosen == "finetune"  # an interrupted job of the same sweep
    assert saved_race(path, "other", None) is None  # another config in the same run dir: race again
    assert saved_race(path, "other", str(tmp_path)).chosen == "finetune"  # resume= continues what is there
    Race(100, 10, 10, 3, scores, chosen="finetune").save(path)  # recorded without config_sha: race again
    assert saved_race(path, "abc", None) is None
    Race(100, 10, 10, 3, scores, chosen="finetune", config_sha="abc").save(path)
    leader_ckpt.unlink()  # a finished run's candidates were tidied away: nothing to continue from
    assert saved_race(path, "abc", None) is None


def test_the_continued_pick_takes_its_checkpoint_callbacks_state_along(tmp_path) -> None:
    """The race checkpoint's ModelCheckpoint paths move from auto/<name>/ to the run dir, its best checkpoint is
    copied there, so Lightning restores the best score instead of dropping it; a callback saving elsewhere stays."""
    import os

    import torch

    from tl_cli.run.race import continue_checkpoint
    from tl_cli.rundir import RunDir

    run = tmp_path / "run"
    folder = run / "auto" / "finetune" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(b"best weights")
    old = os.path.realpath(folder)
    best = f"{old}/best.ckpt"
    ours = {"dirpath": old, "best_model_path": best, "best_model_score": torch.tensor(0.9),
            "best_k_models": {best: torch.tensor(0.9)}, "last_model_path": f"{old}/last.ckpt"}  # fmt: skip
    elsewhere = {"dirpath": str(tmp_path / "other"), "best_model_path": ""}
    callbacks = {"ModelCheckpoint{'monitor': 'val/acc'}": ours, "ModelCheckpoint{'monitor': None}": elsewhere}
    torch.save({"callbacks": callbacks, "epoch": 2}, folder / "race.ckpt")
    continued = continue_checkpoint(RunDir(run), "finetune", str(folder / "race.ckpt"))
    state = torch.load(continued, weights_only=False)["callbacks"]
    new = os.path.realpath(run / "checkpoints")
    moved = state["ModelCheckpoint{'monitor': 'val/acc'}"]
    assert moved["dirpath"] == new and moved["best_model_path"] == f"{new}/best.ckpt"
    assert list(moved["best_k_models"]) == [f"{new}/best.ckpt"] and moved["last_model_path"] == f"{new}/last.ckpt"
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == b"best weights"
    assert state["ModelCheckpoint{'monitor': None}"] == elsewhere
    assert Path(continued).parent == folder  # under auto/: removed with the candidates' files


def test_the_log_says_what_ran_for_how_long_and_why_the_pick_won() -> None:
    from tl_cli.run.race import race_lines

    scores = {
        "freeze": Score(0.81, 10, 300, 1.2, "proxy", full_val_acc=0.83),
        "finetune": Score(0.78, 1, 30, 2.1, "race", "x.ckpt"),
    }
    lines = race_lines(Race(600, 60, 10, 1, scores, chosen="freeze", why="best val acc (freeze 0.810)"))
    assert len(lines) == 3
    assert "freeze" in lines[0] and "cached un-augmented features" in lines[0] and "300 steps" in lines[0]
    assert "0.830 over all epochs" in lines[0] and "1 ep, 30 steps" in lines[1]
    assert lines[2] == "picks freeze (trains in the run dir): best val acc (freeze 0.810)"

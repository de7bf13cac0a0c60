"""The study view of `tlcli report`: LR chosen on val (never test), ties per cell, auto's hit rate."""

from __future__ import annotations

import json
from pathlib import Path

from tl_cli.report import group_jobs, load_jobs, make_report
from tl_cli.study import build_cells, hit_rate


def write_job(sweep: Path, name: str, strategy: str, lr: float, seed: int, val: float, test: float, **extra) -> None:
    folder = sweep / name
    folder.mkdir(parents=True)
    summary = {
        "strategy": strategy,
        "backbone": "test_resnet",
        "weights": "source.safetensors",
        "dataset": "digits",
        "samples_per_class": 5,
        "lr": lr,
        "seed": seed,
        "metrics": {"val/acc": val, "test/acc": test},
        "params": {"trainable": 1, "total": 2},
        **extra,
    }
    folder.joinpath(".hydra").mkdir()
    (folder / ".hydra/config.yaml").write_text("model:\n  weights: source.safetensors\n")
    (folder / "summary.json").write_text(json.dumps(summary))


def test_lr_is_chosen_on_val_and_ties_and_auto_hits_are_scored(tmp_path: Path) -> None:
    for seed in (0, 1):
        # freeze: lr 0.01 is better on val, 0.1 better on test; the study must report lr 0.01's test acc
        write_job(tmp_path, f"f1_{seed}", "freeze", 0.01, seed, val=0.80, test=0.70 + seed * 0.04)
        write_job(tmp_path, f"f2_{seed}", "freeze", 0.1, seed, val=0.60, test=0.95)
        # scratch reports "random init" as its weights, yet is compared within the source's cell
        write_job(tmp_path, f"s_{seed}", "scratch", 0.01, seed, 0.9, 0.72 + seed * 0.02, weights="random init")
        write_job(tmp_path, f"ft_{seed}", "finetune", 0.01, seed, val=0.9, test=0.50)  # clearly worse
        picks = {0: "freeze", 1: "finetune"}
        write_job(tmp_path, f"a_{seed}", "auto", 0.01, seed, 0.8, 0.7, strategy_auto={"chosen": picks[seed]})
    jobs = load_jobs(tmp_path)
    (cell,) = build_cells(group_jobs(jobs), jobs)
    assert cell.choices["freeze"].lr == 0.01 and cell.choices["freeze"].lrs_tried == 2
    assert abs(cell.choices["freeze"].test[0] - 0.72) < 1e-9
    assert cell.ranking()[0].strategy == "scratch"
    assert cell.winners() == {"scratch", "freeze"}  # 0.73 vs 0.72, pooled std 0.022: within noise
    assert cell.auto_picks == ["freeze", "finetune"] and hit_rate([cell]) == (1, 2)

    make_report(str(tmp_path))
    study_md = (tmp_path / "study.md").read_text()
    assert "auto hit rate: 1/2" in study_md and "lr 0.01" in study_md and "0.95" not in study_md
    assert (tmp_path / "study.png").stat().st_size > 10_000 and (tmp_path / "study.csv").is_file()


def test_a_sweep_without_lr_or_few_shot_axis_writes_no_study(tmp_path: Path) -> None:
    write_job(tmp_path, "0", "freeze", 0.01, 0, 0.8, 0.8)
    write_job(tmp_path, "1", "finetune", 0.01, 0, 0.9, 0.9)
    make_report(str(tmp_path))
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "study.md").exists()

"""The study view of `tlcli report`: LR chosen on val (never test), exact val ties to the smaller LR, ties per cell,
auto's hit rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_cli.errors import TlcliError
from tl_cli.reporting.report import make_report
from tl_cli.reporting.study import build_cells, hit_rate
from tl_cli.reporting.sweep import choose_lr, group_jobs, load_jobs


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


def test_an_exact_val_tie_goes_to_the_smaller_lr(tmp_path: Path) -> None:
    """The documented rule (tl_cli/reporting/sweep.py): highest mean val acc over seeds; an exact tie goes to the
    smaller LR,
    whatever the job order or the test accuracies."""
    # the larger LR comes first in job order and is better on test: neither may decide
    for seed, val in ((0, 0.9375), (1, 1.0)):  # means 0.96875 at both LRs, as on an AMX CPU
        write_job(tmp_path, f"0_big_{seed}", "freeze", 0.03, seed, val=val, test=0.99)
        write_job(tmp_path, f"1_small_{seed}", "freeze", 0.01, seed, val=1.9375 - val, test=0.50)
    write_job(tmp_path, "2_best", "finetune", 0.03, 0, val=0.97, test=0.60)  # finetune: 0.03 wins on val alone
    write_job(tmp_path, "3_worse", "finetune", 0.01, 0, val=0.96875, test=0.99)
    jobs = load_jobs(tmp_path)
    groups = group_jobs(jobs)
    freeze = [g for g in groups if g.key.strategy == "freeze"]
    assert [g.stat("val/acc")[0] for g in freeze] == [0.96875, 0.96875]
    assert choose_lr(freeze).key.lr == 0.01 and choose_lr(freeze[::-1]).key.lr == 0.01
    (cell,) = build_cells(groups, jobs)
    assert cell.choices["freeze"].lr == 0.01 and abs(cell.choices["freeze"].test[0] - 0.50) < 1e-12
    assert cell.choices["finetune"].lr == 0.03
    make_report(str(tmp_path))
    assert "an exact tie goes to the smaller LR" in (tmp_path / "study.md").read_text()


def test_seeds_added_at_the_chosen_lr_do_not_change_the_choice(tmp_path: Path) -> None:
    """LR search on seed 0, then seeds 1 and 2 at the chosen LR only: the choice is made on the seeds every LR
    ran, so poor extra seeds cannot hand it to another LR; the reported stats cover all seeds of the chosen LR."""
    write_job(tmp_path, "a0", "finetune", 0.01, 0, val=0.90, test=0.80)
    write_job(tmp_path, "b0", "finetune", 0.03, 0, val=0.85, test=0.90)
    for seed in (1, 2):  # the chosen LR's later seeds score worse on val than the other LR's seed 0
        write_job(tmp_path, f"a{seed}", "finetune", 0.01, seed, val=0.70, test=0.70)
    jobs = load_jobs(tmp_path)
    groups = group_jobs(jobs)
    assert choose_lr(groups).key.lr == 0.01  # over all seeds 0.01 would lose: mean val 0.767 < 0.85
    (cell,) = build_cells(groups, jobs)
    assert cell.choices["finetune"].lr == 0.01 and cell.choices["finetune"].test[2] == 3


def test_more_seeds_reruns_only_each_strategys_chosen_lr(tmp_path: Path) -> None:
    from study.more_seeds import commands

    for name, strategy, lr, val in (
        ("a", "finetune", 0.01, 0.9),
        ("b", "finetune", 0.03, 0.8),
        ("c", "freeze", 0.1, 0.7),
    ):
        write_job(tmp_path, name, strategy, lr, 0, val=val, test=0.5)
        overrides = [f"strategy={strategy}", f"optim.lr={lr}", "seed=0", "experiment=study_smoke"]
        (tmp_path / name / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    write_job(tmp_path, "c1", "freeze", 0.1, 1, val=0.7, test=0.5)  # freeze already has seed 1
    runs = sorted(commands(tmp_path, [1, 2]))
    assert runs == [
        ["train", "-m", "strategy=finetune", "optim.lr=0.01", "experiment=study_smoke", "seed=1,2"],
        ["train", "-m", "strategy=freeze", "optim.lr=0.1", "experiment=study_smoke", "seed=2"],
    ]


def test_a_sweep_without_lr_or_few_shot_axis_writes_no_study(tmp_path: Path) -> None:
    write_job(tmp_path, "0", "freeze", 0.01, 0, 0.8, 0.8)
    write_job(tmp_path, "1", "finetune", 0.01, 0, 0.9, 0.9)
    make_report(str(tmp_path))
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "study.md").exists()


def test_study_doc_tables_come_from_the_committed_csvs(tmp_path: Path) -> None:
    """docs/study.md's generated part is rebuilt from docs/study/<sweep>/*.csv; --check fails when it drifts."""
    from study.study_doc import BEGIN, END, update

    sweep = tmp_path / "study" / "cell"
    for seed in (0, 1):
        write_job(sweep, f"f1_{seed}", "freeze", 0.01, seed, val=0.80, test=0.70 + seed * 0.04)
        write_job(sweep, f"f2_{seed}", "freeze", 0.1, seed, val=0.60, test=0.95)
        write_job(sweep, f"ft_{seed}", "finetune", 0.03, seed, val=0.9, test=0.80)
    make_report(str(sweep))
    doc = tmp_path / "study.md"
    doc.write_text(f"# Study\n\nhand-written\n\n{BEGIN}\nstale\n{END}\n\nmore prose\n")
    assert update(doc, check=True) is False
    update(doc, check=False)
    text = doc.read_text()
    assert update(doc, check=True) is True and "hand-written" in text and "more prose" in text and "stale" not in text
    assert "| 5 | 0.720 ± 0.028<br>lr 0.01 (n=2) | **0.800 ± 0.000**<br>lr 0.03 (n=2) |" in text
    assert "| 5 | freeze | **0.800** | - | 0.600 |\n| 5 | finetune | - | **0.900** | - |" in text  # seed 0, by LR
    assert "Chosen LRs at an edge of the grid: **2 of 2**" in text


def test_feature_sweep_table_compares_each_option_with_the_baseline_over_seeds(tmp_path: Path) -> None:
    """docs/study/features_*: one row per option, its mean over seeds minus the baseline's, in points."""
    import csv

    from study.study_doc import feature_section

    base = "experiment=study_x strategy=finetune optim.lr=0.03 data.samples_per_class=10"
    rows = [(f"{base} seed={s}", 0.70 + 0.02 * s) for s in range(3)]  # baseline 0.72 ± 0.02
    rows += [(f"{base} seed={s} optim.ema_decay=0.999", 0.80 + 0.02 * s) for s in range(3)]  # +8 points
    rows += [(f"{base} seed={s} data.mixup=0.8 data.cutmix=1.0", 0.70 + 0.02 * s) for s in range(2)]  # -1, tied
    rows += [(f"{base} seed=2 data.mixup=0.8 data.cutmix=1.0", None)]  # unfinished: left out
    folder = tmp_path / "features_x"
    folder.mkdir()
    with open(folder / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["status", "overrides", "dataset", "backbone", "samples_per_class", "strategy", "lr",
                               "val_acc", "test_acc", "train_seconds"])  # fmt: skip
        w.writeheader()
        for overrides, acc in rows:
            w.writerow({"status": "ok" if acc else "failed", "overrides": overrides, "dataset": "d", "backbone": "b",
                        "samples_per_class": 10, "strategy": "finetune", "lr": 0.03, "val_acc": acc or "",
                        "test_acc": acc or "", "train_seconds": 10})  # fmt: skip
    text = "\n".join(feature_section(folder))
    assert "`strategy=finetune` at its val-chosen `optim.lr=0.03`" in text
    assert "| `baseline` | 0.720 ± 0.020 | - | - | 0.720 | 3 |" in text
    assert "| `optim.ema_decay=0.999` | 0.820 ± 0.020 | +10.0 | no | 0.820 | 3 |" in text
    assert "| `data.cutmix=1.0 data.mixup=0.8` | 0.710 ± 0.014 | -1.0 | yes | 0.710 | 2 |" in text


def test_committed_study_doc_and_readme_match_the_committed_evidence() -> None:
    """docs/study.md's and docs/strategies-and-auto.md's tables are exactly what docs/study/<sweep>/*.csv give
    (rerun study_doc after a study)."""
    from study.study_doc import update, update_readme

    root = Path(__file__).parents[2]
    fix = "python -m study.study_doc docs/study.md docs/strategies-and-auto.md"
    assert update(root / "docs" / "study.md", check=True), f"docs/study.md is out of date: {fix}"
    page = root / "docs" / "strategies-and-auto.md"
    assert update_readme(page, root / "docs", check=True), f"docs/strategies-and-auto.md is out of date: {fix}"


def test_readme_blocks_are_rewritten_between_their_markers(tmp_path: Path) -> None:
    """The README's named blocks get the ImageNet sweeps' table and auto's scorecards; prose around them stays."""
    from study.study_doc import readme_blocks, update_readme

    sweep = tmp_path / "study" / "in1k_cell"
    for seed in (0, 1):
        write_job(sweep, f"f_{seed}", "freeze", 0.01, seed, val=0.80, test=0.70)
        write_job(sweep, f"f2_{seed}", "freeze", 0.1, seed, val=0.70, test=0.90)
        write_job(sweep, f"ft_{seed}", "finetune", 0.01, seed, val=0.90, test=0.80)
        write_job(sweep, f"ft10_{seed}", "finetune", 0.01, seed, val=0.90, test=0.85, samples_per_class=10)
    make_report(str(sweep))
    names = list(readme_blocks(tmp_path))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + "".join(f"<!-- study_doc: {n} -->\nold\n<!-- study_doc: end {n} -->\nprose {n}\n"
                                          for n in names))  # fmt: skip
    assert update_readme(readme, tmp_path, check=True) is False
    update_readme(readme, tmp_path, check=False)
    text = readme.read_text()
    assert "old" not in text and all(f"prose {n}" in text for n in names) and text.startswith("intro")
    # freeze at its val-chosen LR 0.01, not the 0.1 that tested best
    assert "| digits | test_resnet | 5 | 0.700 | **0.800** |" in text
    assert text.index("| digits | test_resnet | 5 |") < text.index("| digits | test_resnet | 10 | - | **0.850** |")
    assert update_readme(readme, tmp_path, check=True) is True
    readme.write_text("no markers")
    with pytest.raises(TlcliError, match="add the lines"):
        update_readme(readme, tmp_path, check=True)


def test_one_source_file_spelled_relative_and_absolute_is_one_group(tmp_path: Path, monkeypatch) -> None:
    """Stage 1 launched from the repo with weights=outputs/src.safetensors, stage 2 with an absolute path: one group."""
    source = tmp_path / "outputs" / "src.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    write_job(sweep, "a", "freeze", 0.01, 0, val=0.9, test=0.8, weights="outputs/src.safetensors")
    write_job(sweep, "b", "freeze", 0.01, 1, val=0.8, test=0.7, weights=str(source))
    (group,) = group_jobs(load_jobs(sweep))
    assert group.seeds() == {0, 1} and group.key.weights == str(source)


def test_auto_runs_are_scored_in_the_study_doc_against_every_constant(tmp_path: Path) -> None:
    """auto.csv (one row per strategy=auto job) + study.csv -> docs/study.md's auto table and scorecard."""
    from study.study_doc import auto_section

    sweep = tmp_path / "study" / "cell"
    for seed in (0, 1):
        write_job(sweep, f"f_{seed}", "freeze", 0.01, seed, val=0.80, test=0.70)
        write_job(sweep, f"f2_{seed}", "freeze", 0.1, seed, val=0.70, test=0.90)  # a second LR: a study sweep
        write_job(sweep, f"ft_{seed}", "finetune", 0.01, seed, val=0.90, test=0.80 + 0.002 * seed)
        race = {"method": "race", "chosen": "finetune", "why": "w", "seconds": 100.0}
        write_job(sweep, f"a_{seed}", "auto", 0.01, seed, 0.9, 0.79, strategy_auto=race)
        rule = {"chosen": "freeze", "rule": "r"}  # a record from before the race: the rule
        write_job(sweep, f"r_{seed}", "auto", 0.01, seed, 0.8, 0.70, strategy_auto=rule)
    make_report(str(sweep))
    text = "\n".join(auto_section([sweep]))
    assert "| digits · 5/class · test_resnet | finetune (0.801) | finetune (0.790), finetune (0.790) | " in text
    assert "| auto (race) | 2 | 2/2 (100%) | 0.00 | 0.0 | -1.1 |" in text
    assert "| auto (rule) | 2 | 0/2 (0%) | 10.10 | 10.1 | -10.1 |" in text
    assert "| always freeze | 1 | 0/1 (0%) | 10.10 | 10.1 | - |" in text
    # the first race's runs, set aside with their auto.csv: scored beside the current race as "race v1"
    v1 = "dataset,backbone,samples_per_class,method,seed,pick,test_acc,seconds\n"
    v1 += "digits,test_resnet,5,race,0,freeze,0.7,50.0\ndigits,test_resnet,5,rule,0,freeze,0.7,\n"
    (sweep / "auto_race_v1.csv").write_text(v1)
    text = "\n".join(auto_section([sweep]))
    assert "| cell | best or tied (test acc of the best) | auto race | auto race v1 | auto rule |" in text
    assert "| auto (race v1) | 1 | 0/1 (0%) | 10.10 | 10.1 | -10.1 |" in text  # its rule row is not a second race
    assert "| auto (rule) | 2 | 0/2 (0%) |" in text


def test_extend_grid_runs_one_step_past_each_edge_choice_on_the_search_seed(tmp_path: Path) -> None:
    from study.extend_grid import commands, next_lr

    assert [next_lr(0.1, up=True), next_lr(0.3, up=True), next_lr(0.001, up=False), next_lr(0.0003, up=False)] == [
        0.3,
        1.0,
        0.0003,
        0.0001,
    ]
    assert next_lr(0.03, up=False) == 0.01 and next_lr(0.005, up=True) == 0.015  # off the grid: x3
    for name, strategy, lr, seed, val in (
        ("a", "finetune", 0.01, 0, 0.9),  # finetune: bottom of {0.01, 0.03, 0.1}
        ("a1", "finetune", 0.01, 1, 0.7),  # a later seed at the chosen LR: the step runs on seed 0 only
        ("b", "finetune", 0.03, 0, 0.8),
        ("c", "finetune", 0.1, 0, 0.7),
        ("d", "freeze", 0.01, 0, 0.6),  # freeze: top of {0.003, 0.01}
        ("e", "freeze", 0.003, 0, 0.5),
        ("f", "scratch", 0.01, 0, 0.5),  # scratch: inside {0.003, 0.01, 0.03}
        ("g", "scratch", 0.003, 0, 0.4),
        ("h", "scratch", 0.03, 0, 0.4),
    ):
        write_job(tmp_path, name, strategy, lr, seed, val=val, test=0.5)
        overrides = [f"strategy={strategy}", f"optim.lr={lr}", f"seed={seed}", "experiment=study_smoke"]
        (tmp_path / name / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    assert sorted(commands(tmp_path)) == [
        ["train", "-m", "strategy=finetune", "seed=0", "experiment=study_smoke", "optim.lr=0.003"],
        ["train", "-m", "strategy=freeze", "seed=0", "experiment=study_smoke", "optim.lr=0.03"],
    ]
    write_job(tmp_path, "i", "finetune", 0.003, 0, val=0.85, test=0.5)  # the step ran and lost: no longer an edge
    (tmp_path / "i/.hydra/overrides.yaml").write_text("- strategy=finetune\n- optim.lr=0.003\n- seed=0\n")
    assert [args[2] for args in commands(tmp_path)] == ["strategy=freeze"]


def test_race_replay_simulates_the_race_on_val_curves_only(tmp_path: Path) -> None:
    """The replay scores trainable candidates on their first race epochs, frozen ones on their un-augmented
    proxy, scratch at its own LR; a pick's outcome is the full run's val acc as the race would train it."""
    import json

    from study.race_replay import load, replay

    curves = {  # job -> val acc per epoch (10 epochs; at race_fraction 0.3 the race sees the first 3)
        "freeze": [0.70] * 10,
        "freeze_proxy": [0.75] * 10,
        "extend_freeze": [0.72] * 10,
        "extend_freeze_proxy": [0.60] * 10,
        "finetune": [0.80] * 3 + [0.85] * 7,  # fast start
        "extend_finetune": [0.60] * 3 + [0.95] * 7,  # slow start: the race stops it before it shows
        "scratch_x0.333": [0.90] * 10,
        "scratch_x1": [0.10] * 10,
    }
    for name, curve in curves.items():
        job = tmp_path / "cell" / "seed0" / name
        job.mkdir(parents=True)
        summary = {
            "metrics": {"val/acc": max(curve)},
            "train_seconds": 1.0 if "proxy" in name else 10.0,
            "epochs": 10,
            "split_sizes": {"val": 1000, "train": 50},
            "samples_per_class": 5,
            "num_classes": 10,
        }
        (job / "summary.json").write_text(json.dumps(summary))
        (job / "metrics.csv").write_text("epoch,val/acc\n" + "".join(f"{e},{v}\n" for e, v in enumerate(curve)))
    (seed,) = load(tmp_path)
    base = {"race_fraction": 0.3, "confirm_fraction": 0.0, "frozen_at": "race", "tie_se": 0.0, "prior": "finetune",
            "scratch_lr_mult": 0.333}  # fmt: skip
    chosen, regret, cost = replay(seed, base)
    assert chosen == "scratch" and regret == pytest.approx(100 * (0.95 - 0.90))
    assert cost == pytest.approx((1 + 1 + 3 * 3 + 7) / 10)  # proxies, three race slices, the pick's other 70 %
    assert replay(seed, {**base, "scratch_lr_mult": 1.0})[0] == "finetune"
    assert replay(seed, {**base, "scratch_lr_mult": 1.0, "race_fraction": 0.5})[0] == "extend_finetune"
    frozen = {**base, "scratch_lr_mult": 1.0, "tie_se": 0.0}
    (tmp_path / "cell/seed0/freeze_proxy/metrics.csv").write_text("epoch,val/acc\n0,0.99\n")
    (seed,) = load(tmp_path)
    chosen, regret, cost = replay(seed, frozen)
    assert chosen == "freeze" and regret == pytest.approx(100 * (0.95 - 0.70))  # scored on the augmented run
    assert cost == pytest.approx((1 + 1 + 3 * 3 + 10) / 10)  # a frozen pick trains in full
    # a second look at 5 of 10 epochs: finetune (the best trainable at 3) trains on; freeze's proxy still leads
    looked = {**frozen, "confirm_fraction": 0.5}
    chosen, regret, cost = replay(seed, looked)
    assert chosen == "freeze" and cost == pytest.approx((1 + 1 + 3 * 3 + 2 * 1 + 10) / 10)


def test_unseen_cells_are_those_raced_only_after_the_settings_were_chosen() -> None:
    """race v2's settings were chosen on a replay of the cells race v1 ran on; the others are held out."""
    from study.study_doc import unseen_cells
    from tl_cli.reporting.study import AutoRun, Cell

    tuned, new, rule_only = (Cell("d", "b", "w", n) for n in (10, 50, 100))
    tuned.auto_runs = [AutoRun("race", "finetune", 0.9), AutoRun("race v1", "freeze", 0.8)]
    new.auto_runs = [AutoRun("race", "finetune", 0.9), AutoRun("rule", "scratch", 0.5)]
    rule_only.auto_runs = [AutoRun("rule", "scratch", 0.5)]
    assert unseen_cells([tuned, new, rule_only]) == [new]


def test_study_compare_flags_a_rerun_row_outside_the_seeds_noise(tmp_path: Path, capsys) -> None:
    import csv

    from study.study_compare import main as compare

    committed = Path(__file__).parents[2] / "docs" / "study"
    rows = list(csv.DictReader(open(committed / "digits_test_resnet" / "study.csv", newline="")))
    rerun = [r for r in rows if r["samples_per_class"] in ("2", "all")]
    moved = rerun[0]
    moved["test_acc"] = str(float(moved["test_acc"]) - 0.2)  # 20 points: past any seed std in that file
    (tmp_path / "digits_test_resnet").mkdir()
    with open(tmp_path / "digits_test_resnet" / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rerun)
    (tmp_path / "not_committed").mkdir()
    (tmp_path / "not_committed" / "study.csv").write_text("samples_per_class,strategy\n")

    assert compare([str(tmp_path), str(committed)]) == 0
    out = capsys.readouterr().out
    n = len(rerun)
    assert f"{n} (cell, strategy) rows in both; same val-chosen LR {n}/{n}" in out
    assert f"within the seeds' noise {n - 1}/{n}; largest |Δ| 20.0 points" in out
    assert out.count("**no**") == 1 and "not_committed: no committed study.csv" in out
    with pytest.raises(TlcliError, match="no study folder"):
        compare([str(tmp_path / "missing"), str(committed)])


def test_race_evidence_and_defaults_match_the_committed_files() -> None:
    """docs/study/auto_v31: replay.md is the val-only replay of tuning.csv and its chosen settings are the shipped
    defaults (configs/strategy/auto.yaml); each untouched.md is the verdict table of its runs.csv, v3.1's also the
    generated block of docs/strategies-and-auto.md."""
    from omegaconf import OmegaConf

    from study.auto_eval import doc_block, read
    from study.auto_eval import report as verdicts
    from study.race_replay import GRID, choose, load_csv
    from study.race_replay import report as replayed

    root = Path(__file__).parents[2]
    evidence = root / "docs" / "study" / "auto_v31"
    seeds = load_csv(evidence / "tuning.csv")
    assert (evidence / "replay.md").read_text() == replayed(seeds), "python -m study.race_replay ... --write"
    shipped = OmegaConf.load(root / "configs" / "strategy" / "auto.yaml").auto
    chosen, _ = choose(seeds)
    assert {key: shipped[key] for key in GRID} == chosen
    for version in ("auto_v3", "auto_v31"):
        table = verdicts(read(root / "docs" / "study" / version / "runs.csv"))
        assert (root / "docs" / "study" / version / "untouched.md").read_text() == table, f"{version}: auto_eval table"
    page = (root / "docs" / "strategies-and-auto.md").read_text()
    assert doc_block(page) == table.rstrip("\n"), "python -m study.auto_eval doc ..."


def test_auto_eval_verdict_pairs_seeds_and_applies_the_fixed_rule() -> None:
    """Per cell: the best fixed strategy by mean test acc, auto's paired difference per seed, within noise when
    the mean is >= -1.5 points or the 95 % interval covers 0; cost = auto wall / finetune wall per seed."""
    from study.auto_cells import FIXED
    from study.auto_eval import cell_results, scorecard

    rows = []
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        tests = {"freeze": 0.70, "finetune": 0.80 + shift, "extend_freeze": 0.71, "extend_finetune": 0.79,
                 "scratch": 0.60, "auto": 0.80 + shift}  # fmt: skip
        for job, acc in tests.items():
            wall = {"finetune": 20.0, "auto": 25.0 + seed}.get(job, 10.0)
            pick = "finetune" if job == "auto" else ""
            rows.append({"group": "untouched", "cell": "fashion_odd_5", "seed": seed, "job": job, "test_acc": acc,
                         "val_acc": acc, "wall_seconds": wall, "train_seconds": 1.0, "pick": pick})  # fmt: skip
        far = {job: (0.60 if job == "auto" else 0.80 - 0.02 * FIXED.index(job)) for job in (*FIXED, "auto")}
        for job, acc in far.items():
            rows.append({"group": "untouched", "cell": "digits_all", "seed": seed, "job": job, "test_acc": acc,
                         "val_acc": acc, "wall_seconds": 10.0, "train_seconds": 1.0, "pick": "scratch"})  # fmt: skip
    near, far_cell = cell_results(rows)
    assert near.best == "finetune" and near.diffs == pytest.approx([0.0, 0.0, 0.0]) and near.within_noise
    assert near.ratios == pytest.approx([1.25, 1.3, 1.35]) and near.picks == ["finetune"] * 3
    assert far_cell.best == "freeze" and far_cell.mean_diff == pytest.approx(-20.0) and not far_cell.within_noise
    card = "\n".join(scorecard([near, far_cell]))
    assert "| auto | 1/2 | 1/2 | 10.00 | 20.00 |" in card
    assert "| always finetune | - | 1/2 | 1.00 | 2.00 |" in card  # 0 on the first cell, 2 points (> 1.5) on the second
    assert near.within_points and not far_cell.within_points

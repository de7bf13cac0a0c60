"""The report of a sweep (`tlcli report`, tl_cli/commands/report.py): report.md, report.csv and report.png.

Runs that differ only by seed form one group (mean ± std over seeds; tl_cli/reporting/sweep.py holds the sweep
model and its rules). Jobs without summary.json (failed or interrupted) are listed, never dropped. A sweep over
the LR or the samples per class also gets the study view (tl_cli/reporting/study.py). Import-light: matplotlib
is loaded only to draw.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tl_cli.errors import TlcliError
from tl_cli.reporting import study
from tl_cli.reporting.sweep import GROUP_KEYS, Group, SweepJob, group_jobs, load_jobs, short


def _fmt(mean: float | None, std: float, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def write_markdown(sweep: Path, jobs: list[SweepJob], groups: list[Group]) -> Path:
    """report.md: one row per group, the tie rule, and the failed or unfinished jobs."""
    head = "| | strategy | backbone | weights | samples/class | lr | n runs (seeds) | val acc | test acc "
    head += "| trainable / total params | train s (mean) | images/s (mean) |"
    done = sum(j.status == "ok" for j in jobs)
    lines = [f"# Sweep report: {sweep}", ""]
    lines += [f"{len(jobs)} jobs: {done} finished, {len(jobs) - done} failed or unfinished. Best test acc first."]
    lines += ["", head, "|" + "---|" * 12]
    for rank, g in enumerate(groups):
        first = g.jobs[0].summary or {}
        params = first.get("params", {})
        seeds = ", ".join(str((j.summary or {}).get("seed")) for j in g.jobs)
        mark = "best" if rank == 0 else ("tie with best" if g.tie else "")
        spc = g.key.samples_per_class if g.key.samples_per_class is not None else "all"
        cells = [
            mark,
            g.key.strategy,
            g.key.backbone,
            short(g.key.weights),
            spc,
            "-" if g.key.lr is None else g.key.lr,
            f"{len(g.jobs)} ({seeds})",
        ]
        cells += [_fmt(*g.stat("val/acc")), _fmt(*g.stat("test/acc"))]
        cells += [f"{params.get('trainable', 0):,} / {params.get('total', 0):,}"]
        cells += [_num(g.mean_of("train_seconds"), 2), _num(g.mean_of("train_images_per_second"), 0)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Accuracies are mean ± sample std over the seeds of a group (the value alone for one run). "
        "A group is a **tie with best** when its mean test acc is within one pooled std of the best group's: "
        "best − mean ≤ sqrt(((n₁−1)s₁² + (n₂−1)s₂²) / (n₁+n₂−2)); with one run in each group only an equal "
        "mean ties. Plots: report.png; one row per job: report.csv.",
    ]
    failed = [j for j in jobs if j.status != "ok"]
    lines += ["", "## Failed or unfinished runs", ""]
    if failed:
        lines += ["No summary.json (the job failed or was interrupted; rerun the same sweep to resume it):", ""]
        lines += [f"- `{j.path}`: {' '.join(j.overrides) or '(no overrides recorded)'}" for j in failed]
    else:
        lines.append("None.")
    path = sweep / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(sweep: Path, jobs: list[SweepJob], groups: list[Group]) -> Path:
    """report.csv: one row per job, finished or not, with its status and group."""
    label = {id(j): g.label for g in groups for j in g.jobs}
    columns = ["job", "status", "group", *GROUP_KEYS, "seed", "val_acc", "test_acc", "trainable_params"]
    columns += ["total_params", "train_seconds", "train_images_per_second", "epochs", "overrides"]
    path = sweep / "report.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for j in jobs:
            s, params = j.summary or {}, (j.summary or {}).get("params", {})
            row = {k: s.get(k) for k in (*GROUP_KEYS, "seed", "train_seconds", "train_images_per_second", "epochs")}
            if not s:  # what it would have been, from the composed config
                model, data = j.config.get("model") or {}, j.config.get("data") or {}
                row.update(strategy=_strategy_name(j), backbone=model.get("backbone"), seed=j.config.get("seed"))
                row.update(dataset=data.get("name"), samples_per_class=data.get("samples_per_class"))
                row.update(lr=(j.config.get("optim") or {}).get("lr"))
            row.update(job=j.name, status=j.status, group=label.get(id(j)), overrides=" ".join(j.overrides))
            row.update(val_acc=j.metric("val/acc"), test_acc=j.metric("test/acc"))
            row.update(trainable_params=params.get("trainable"), total_params=params.get("total"))
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def _strategy_name(job: SweepJob) -> str:
    for o in job.overrides:
        if o.startswith("strategy="):
            return o.split("=", 1)[1]
    strategy = job.config.get("strategy")
    return str(strategy.get("name", "")) if isinstance(strategy, dict) else str(strategy or "")


def write_png(sweep: Path, groups: list[Group]) -> Path:
    """report.png: test acc per group (bars, std error bars) and mean val acc per epoch per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(4.5, 0.45 * len(groups) + 2.0)
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(15, height), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    y = list(range(len(groups)))
    means = [g.stat("test/acc")[0] or 0.0 for g in groups]
    stds = [g.stat("test/acc")[1] for g in groups]
    # horizontal bars: group labels (strategy + what varies) stay readable however long they are
    bars.barh(y, means, xerr=stds, capsize=5, color=[colors(i % 10) for i in y], edgecolor="black", linewidth=0.5)
    for i, (m, s, g) in enumerate(zip(means, stds, groups, strict=True)):
        bars.text(m + s + 0.01, i, f"{m:.3f} (n={len(g.jobs)})", va="center", fontsize=8)
    bars.set_yticks(y, [g.label for g in groups], fontsize=8)
    bars.invert_yaxis()  # best first, at the top
    bars.set_xlim(0, max((m + s for m, s in zip(means, stds, strict=True)), default=1.0) + 0.22)  # room for labels
    bars.set_ylabel("strategy / group (best first)")
    bars.set_xlabel("test accuracy (mean ± std over seeds)")
    bars.set_title("Test accuracy per group")
    bars.grid(axis="x", alpha=0.3)
    for i, g in enumerate(groups):
        epochs, acc = g.curve()
        if epochs:
            curves.plot(epochs, acc, marker="o", color=colors(i % 10), label=f"{g.label} (n={len(g.jobs)})")
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation accuracy (mean over seeds)")
    curves.set_title("Learning curves: val acc per epoch")
    curves.grid(alpha=0.3)
    if curves.lines:
        curves.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a curve
        curves.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Sweep report: {Path(*sweep.absolute().parts[-2:])}", fontsize=11)
    path = sweep / "report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(directory: str) -> Path:
    """Write report.md, report.csv and report.png into a multirun dir; returns report.md's path."""
    sweep = Path(directory).expanduser()
    example = "e.g. 'tlcli report outputs/train/multiruns/<time>'"
    if not sweep.is_dir():
        raise TlcliError(f"no such directory '{directory}'; give the folder of a 'tlcli train -m' sweep, {example}")
    jobs = load_jobs(sweep)
    if not jobs:
        what = "a single run, not a sweep" if (sweep / "summary.json").is_file() else "no job folders"
        raise TlcliError(
            f"no runs in '{directory}' ({what}: no subfolder holds summary.json or .hydra/config.yaml); "
            f"give the folder of a 'tlcli train -m' sweep, {example}"
        )
    groups = group_jobs(jobs)
    path = write_markdown(sweep, jobs, groups)
    write_csv(sweep, jobs, groups)
    write_png(sweep, groups)
    if study.is_study(groups):  # an LR search or a few-shot curve: also the per-cell strategy comparison
        study.write_study(sweep, jobs, groups)
    return path

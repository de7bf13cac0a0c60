"""Transfer-study view of a sweep: per cell, each strategy at its val-selected LR, ties, auto's hit rate.

A *cell* is one (dataset, backbone, source weights, samples per class). Within a cell, each strategy's
learning rate is chosen on **val** accuracy by one rule (tl_cli/reporting/sweep.py `choose_lr`): the highest mean val
accuracy over seeds; an exact tie goes to the smaller LR. Its test accuracy (mean ± std over seeds) is then
what the strategy scores. The best strategy and those tied with it (within the pooled std, as in report.md)
answer "which approach should I use here?". `strategy=auto` jobs in the same sweep are scored against that
answer. Written by `tlcli report` when a sweep varies the LR or the samples per class: study.md, study.csv
and study.png.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tl_cli.reporting.sweep import Group, SweepJob, choose_lr, short, strategy_order, tied_with_best


@dataclass
class Choice:
    """One strategy in one cell, at the LR chosen on validation accuracy."""

    strategy: str
    lr: float | None
    group: Group
    lrs_tried: int
    lrs: tuple[float, ...] = ()  # every LR this strategy ran in this cell (empty when read back from study.csv)

    @property
    def test(self) -> tuple[float | None, float, int]:
        return self.group.stat("test/acc")

    @property
    def val(self) -> float | None:
        return self.group.stat("val/acc")[0]


@dataclass
class AutoRun:
    """One strategy=auto job of a cell: its method, what it picked, and its own test accuracy."""

    method: str  # race | rule (records from before the race have no method: the rule)
    pick: str
    test_acc: float | None
    seed: int | None = None
    seconds: float | None = None  # the race's own record: race + final fit


@dataclass
class Cell:
    dataset: str
    backbone: str
    weights: str
    samples_per_class: int | None
    choices: dict[str, Choice] = field(default_factory=dict)
    auto_runs: list[AutoRun] = field(default_factory=list)  # one per auto job (seed)

    @property
    def auto_picks(self) -> list[str]:
        return [r.pick for r in self.auto_runs]

    def ranking(self) -> list[Choice]:
        return sorted(self.choices.values(), key=lambda c: -(c.test[0] if c.test[0] is not None else -math.inf))

    def winners(self) -> set[str]:
        """The best strategy and every strategy tied with it (within the pooled std over seeds)."""
        ranked = self.ranking()
        if not ranked or ranked[0].test[0] is None:
            return set()
        return {ranked[0].strategy} | {c.strategy for c in ranked[1:] if tied_with_best(ranked[0].test, c.test)}

    def auto_hits(self) -> int:
        winners = self.winners()
        return sum(pick in winners for pick in self.auto_picks)

    def regret(self, strategy: str) -> float | None:
        """Points of test accuracy lost by picking `strategy` instead of the cell's best (both at their
        val-chosen LR, mean over seeds); None where the cell did not run it."""
        ranked, choice = self.ranking(), self.choices.get(strategy)
        if not ranked or choice is None or choice.test[0] is None or ranked[0].test[0] is None:
            return None
        return 100.0 * (ranked[0].test[0] - choice.test[0])


def _source_name(weights: str) -> str:
    """A weights file's short name; a tlcli run's model.safetensors is named after its run folder."""
    path = Path(str(weights))
    return path.parent.name if path.stem == "model" and path.parent.name else short(weights)


def _spc_order(spc: int | None) -> float:
    return math.inf if spc is None else float(spc)


def _source(job: SweepJob) -> str:
    """The configured source weights: scratch and an auto run that picked scratch report "random init"
    in summary.json, yet belong to the cell of the source they were compared with."""
    configured = (job.config.get("model") or {}).get("weights")
    return str(configured) if configured is not None else str((job.summary or {}).get("weights"))


def build_cells(groups: list[Group], jobs: list[SweepJob]) -> list[Cell]:
    """Cells of a sweep with each strategy's val-selected LR, plus auto's picks."""
    cells: dict[tuple, Cell] = {}
    by_strategy: dict[tuple, list[Group]] = {}
    shown: dict[str, str] = {}  # configured source -> the weights file the transfer runs loaded
    for g in groups:
        if g.key.strategy not in ("scratch", "auto"):
            shown.setdefault(_source(g.jobs[0]), str(g.key.weights))
    for g in groups:
        k = g.key
        if k.strategy == "auto":
            continue
        source = _source(g.jobs[0])
        cell_key = (k.dataset, k.backbone, source, k.samples_per_class)
        cells.setdefault(cell_key, Cell(k.dataset, k.backbone, shown.get(source, source), k.samples_per_class))
        by_strategy.setdefault((*cell_key, k.strategy), []).append(g)
    for (*cell_key, strategy), candidates in by_strategy.items():
        chosen = choose_lr(candidates)  # highest mean val acc; an exact tie goes to the smaller LR
        lrs = tuple(sorted(g.key.lr for g in candidates if g.key.lr is not None))
        cells[tuple(cell_key)].choices[strategy] = Choice(strategy, chosen.key.lr, chosen, len(candidates), lrs)
    for job in jobs:
        s = job.summary or {}
        if s.get("strategy") != "auto" or not s.get("strategy_auto"):
            continue
        cell = cells.get((s.get("dataset"), s.get("backbone"), _source(job), s.get("samples_per_class")))
        if cell is not None:
            pick = str(s["strategy_auto"].get("chosen"))
            test = (s.get("metrics") or {}).get("test/acc")
            record = s["strategy_auto"]
            method = str(record.get("method", "rule"))
            seconds = record.get("seconds") if method == "race" else None  # the rule's is its probe's alone
            cell.auto_runs.append(AutoRun(method, pick, test, s.get("seed"), seconds))
    order = sorted(
        cells.values(), key=lambda c: (c.dataset, c.backbone, str(c.weights), _spc_order(c.samples_per_class))
    )
    return order


def _strategies(cells: list[Cell]) -> list[str]:
    return strategy_order({s for c in cells for s in c.choices})


def hit_rate(cells: list[Cell]) -> tuple[int, int]:
    """(auto picks that were the best strategy or tied with it, auto picks)."""
    return sum(c.auto_hits() for c in cells), sum(len(c.auto_picks) for c in cells)


@dataclass
class Scorecard:
    """How one way of choosing did over the cells: best-or-tied picks, pick regret, own test accuracy."""

    name: str
    picks: int
    hits: int
    mean_regret: float  # points, mean over picks
    worst_regret: float
    own_minus_best: float | None  # auto only: its own test acc minus the cell's best, points, mean over runs


def scorecards(cells: list[Cell]) -> list[Scorecard]:
    """Each auto method over its runs (a pick per seed), and each constant strategy over the cells where auto ran
    (a pick per cell: with the same seeds in every cell, the two weigh the cells alike)."""
    scored = [c for c in cells if c.auto_runs]
    cards = []
    for method in sorted({r.method for c in scored for r in c.auto_runs}):
        runs = [(c, r) for c in scored for r in c.auto_runs if r.method == method]
        regrets = [c.regret(r.pick) or 0.0 for c, r in runs]
        own = [100.0 * (r.test_acc - c.ranking()[0].test[0]) for c, r in runs if r.test_acc is not None]
        hits = sum(r.pick in c.winners() for c, r in runs)
        cards.append(Scorecard(f"auto ({method})", len(runs), hits, _mean(regrets), max(regrets), _mean(own)))
    for strategy in _strategies(scored):
        ran = [c for c in scored if strategy in c.choices]
        if not ran:
            continue
        regrets = [c.regret(strategy) or 0.0 for c in ran]
        hits = sum(strategy in c.winners() for c in ran)
        cards.append(Scorecard(f"always {strategy}", len(ran), hits, _mean(regrets), max(regrets), None))
    return cards


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def scorecard_lines(cards: list[Scorecard]) -> list[str]:
    """A markdown table of the scorecards."""
    lines = [
        "| how the strategy is chosen | picks | best or tied | mean regret (points) | worst regret | "
        "own test acc minus the cell's best |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for card in cards:
        own = f"{card.own_minus_best:+.1f}" if card.own_minus_best is not None else "-"
        share = f"{card.hits}/{card.picks} ({card.hits / card.picks:.0%})"
        lines.append(
            f"| {card.name} | {card.picks} | {share} | {card.mean_regret:.2f} | {card.worst_regret:.1f} | {own} |"
        )
    return lines


def write_markdown(sweep: Path, cells: list[Cell]) -> Path:
    strategies = _strategies(cells)
    lines = [f"# Transfer study: {sweep}", ""]
    lines += [
        "Test accuracy, mean ± std over seeds, of each strategy at the learning rate chosen on **validation** "
        "accuracy (shown under it): the highest mean val acc over seeds; an exact tie goes to the smaller LR. "
        "**Bold**: best in its row; *≈*: tied with the best (within the pooled std). "
        "auto: what `strategy=auto` picked per seed, and how many picks were the best or tied.",
        "",
    ]
    for (dataset, backbone, weights), rows in _panels(cells).items():
        lines += [f"## {dataset} · {backbone} · source {_source_name(weights)}", ""]
        head = ["samples/class", *strategies] + (["auto picks (hits)"] if any(c.auto_picks for c in rows) else [])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cell in rows:
            winners, ranked = cell.winners(), cell.ranking()
            best = ranked[0].strategy if ranked else None
            row = [short(cell.samples_per_class)]
            for s in strategies:
                c = cell.choices.get(s)
                if c is None or c.test[0] is None:
                    row.append("-")
                    continue
                mean, std, n = c.test
                text = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
                text = f"**{text}**" if s == best else (f"≈ {text}" if s in winners else text)
                row.append(f"{text}<br>lr {c.lr:g}" if c.lr is not None else text)
            if len(head) > len(strategies) + 1:
                picks = Counter(cell.auto_picks)
                row.append(
                    ", ".join(f"{k} ×{v}" for k, v in picks.items()) + f" ({cell.auto_hits()}/{len(cell.auto_picks)})"
                )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    hits, total = hit_rate(cells)
    if total:
        lines += [
            f"**auto hit rate: {hits}/{total} = {hits / total:.0%}** of its picks were the best strategy of "
            "their cell or tied with it.",
            "",
            "Regret: the cell's best mean test accuracy minus the picked strategy's, both at their val-chosen LR; "
            "the constant strategies are scored on the same cells, once per auto run.",
            "",
            *scorecard_lines(scorecards(cells)),
            "",
        ]
    lines += [
        "Plot: study.png (test accuracy against samples per class, one line per strategy). "
        "Every job: report.csv; every LR group: report.md."
    ]
    path = sweep / "study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(sweep: Path, cells: list[Cell]) -> Path:
    columns = [
        "dataset",
        "backbone",
        "weights",
        "samples_per_class",
        "strategy",
        "lr",
        "lrs_tried",
        "seeds",
        "val_acc",
        "test_acc",
        "test_std",
        "best_or_tied",
        "auto_picks",
    ]
    path = sweep / "study.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for cell in cells:
            winners = cell.winners()
            for s, c in cell.choices.items():
                mean, std, n = c.test
                writer.writerow(
                    [
                        cell.dataset,
                        cell.backbone,
                        cell.weights,
                        short(cell.samples_per_class),
                        s,
                        c.lr,
                        c.lrs_tried,
                        n,
                        c.val,
                        mean,
                        std,
                        s in winners,
                        " ".join(cell.auto_picks),
                    ]
                )
    return path


def _panels(cells: list[Cell]) -> dict[tuple, list[Cell]]:
    panels: dict[tuple, list[Cell]] = {}
    for c in cells:
        panels.setdefault((c.dataset, c.backbone, c.weights), []).append(c)
    return panels


def write_png(sweep: Path, cells: list[Cell]) -> Path:
    """study.png: test acc (val-selected LR) against samples per class, one line per strategy, a panel per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(cells)
    strategies = _strategies(cells)
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(strategies)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2, 5), squeeze=False, constrained_layout=True)
    for ax, ((dataset, backbone, weights), rows) in zip(axes[0], panels.items(), strict=True):
        ticks = [short(c.samples_per_class) for c in rows]
        x = list(range(len(rows)))  # even spacing: 1, 2, 5, 10, 50, all
        for s in strategies:
            points = [(i, c.choices[s].test) for i, c in enumerate(rows) if s in c.choices and c.choices[s].test[0]]
            if points:
                xs, stats = zip(*points, strict=True)
                ax.errorbar(
                    xs,
                    [m for m, _, _ in stats],
                    yerr=[sd for _, sd, _ in stats],
                    marker="o",
                    capsize=3,
                    color=colors[s],
                    label=s,
                    linestyle="--" if s == "scratch" else "-",
                )
        ax.set_xticks(x, ticks)
        ax.set_xlabel("training samples per class")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.set_title(f"{dataset} · {backbone} · source {_source_name(weights)}", fontsize=10)
        low = min((c.test[0] - c.test[1] for r in rows for c in r.choices.values() if c.test[0] is not None), default=0)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="strategy (LR chosen on val)", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Few-shot curve: where does transfer stop beating scratch?", fontsize=11)
    path = sweep / "study.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def is_study(groups: list[Group]) -> bool:
    """A sweep over the LR or the samples per class (more than one value of either)."""
    return len({g.key.samples_per_class for g in groups}) > 1 or len({g.key.lr for g in groups}) > 1


AUTO_COLUMNS = ["dataset", "backbone", "samples_per_class", "method", "seed", "pick", "test_acc", "seconds"]


def write_auto_csv(sweep: Path, cells: list[Cell]) -> Path:
    """auto.csv: one row per strategy=auto job (what it picked, its own test acc); study_doc scores it against
    study.csv's cells."""
    path = sweep / "auto.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(AUTO_COLUMNS)
        for cell in cells:
            for r in cell.auto_runs:
                spc = short(cell.samples_per_class)
                writer.writerow([cell.dataset, cell.backbone, spc, r.method, r.seed, r.pick, r.test_acc, r.seconds])
    return path


def write_study(sweep: Path, jobs: list[SweepJob], groups: list[Group]) -> Path:
    cells = build_cells(groups, jobs)
    path = write_markdown(sweep, cells)
    write_csv(sweep, cells)
    write_auto_csv(sweep, cells)
    write_png(sweep, cells)
    return path

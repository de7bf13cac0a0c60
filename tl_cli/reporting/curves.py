"""curves.png of a run: train and val loss and accuracy, and the learning rate, per epoch, from its metrics.csv."""

from __future__ import annotations

import logging
from pathlib import Path

from tl_cli.rundir import CURVES, METRICS, EpochLog, RunDir, read_epochs

logger = logging.getLogger(__name__)
MAX_LR_LINES = 8  # more param groups (layer_decay gives one per layer): the lowest and highest LR only


def plot_curves(metrics_csv: Path, png: Path, title: str = "") -> bool:
    """Draw the three panels; False (nothing drawn) when metrics.csv has no epoch rows."""
    log = read_epochs(metrics_csv)
    if not log.epochs:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (loss, acc, lr) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, metric in ((loss, "loss"), (acc, "acc")):
        for split, style in (("train", "o-"), ("val", "s-")):
            values = log.metrics.get(f"{split}/{metric}", {})
            if values:
                epochs = sorted(values)
                ax.plot(epochs, [values[e] for e in epochs], style, label=split)
        test = log.metrics.get(f"test/{metric}")
        if test:  # tested once, after fit, on the selected epoch's weights: a level, not a point in time
            ax.axhline(test[max(test)], color="tab:green", linestyle="--", label="test (best weights)")
        _style(ax, metric, f"{metric} per epoch")
    _plot_lrs(lr, log)
    if title:
        fig.suptitle(title)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def _plot_lrs(ax, log: EpochLog) -> None:
    """One line per distinct LR schedule (groups that only differ by weight decay share one)."""
    distinct: dict[tuple, str] = {}
    for group, values in sorted(log.lrs.items()):
        distinct.setdefault(tuple(sorted(values.items())), group)
    lines = list(distinct.items())
    if len(lines) > MAX_LR_LINES:
        lines = sorted(lines, key=lambda item: max(v for _, v in item[0]))
        lines = [lines[0], lines[-1]]
    for points, group in lines:
        ax.plot([e for e, _ in points], [v for _, v in points], ".-", label=group)
    if lines and all(v > 0 for points, _ in lines for _, v in points):
        ax.set_yscale("log")
    _style(ax, "learning rate", "LR per epoch (at its start)")


def _style(ax, ylabel: str, title: str) -> None:
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize=8)


def draw_run_curves(run: RunDir, title: str) -> None:
    """<run>/curves.png from the run's own metrics.csv (a warning where it has no epoch rows)."""
    metrics = run / METRICS
    if not metrics.is_file() or not plot_curves(metrics, run / CURVES, title):
        logger.warning("no %s with epoch rows in %s (logger removed?): no %s", METRICS, run.path, CURVES)

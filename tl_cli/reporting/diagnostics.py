"""What `tlcli eval` shows beyond the metrics: the top losses, the most confused pairs and a reliability diagram.

Computed from the scores eval already has (one pass over the split): nothing runs the network again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tl_cli.transfer.calibration import ECE_BINS

TOP_LOSSES_PNG = "top_losses.png"
CALIBRATION_PNG = "calibration.png"


def most_confused(matrix: torch.Tensor, classes: list[str]) -> list[list[Any]]:
    """[true, predicted, count] of every off-diagonal cell with a count, most frequent first (then by names)."""
    cells = [
        [classes[t], classes[p], int(matrix[t, p])]
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and matrix[t, p] > 0
    ]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))


def top_losses(
    scores: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    count: int,
    path_of: Callable[[int], str | None],
) -> list[dict[str, Any]]:
    """The `count` images with the highest cross-entropy: index, path (where the source has paths), true and
    predicted class, the predicted class's probability and the loss; highest loss first."""
    losses = torch.nn.functional.cross_entropy(scores.float(), targets, reduction="none")
    probs = scores.float().softmax(dim=1)
    order = torch.argsort(losses, descending=True, stable=True)[:count].tolist()
    rows = []
    for i in order:
        predicted = int(probs[i].argmax())
        row = {"index": i, "path": path_of(i), "true": classes[int(targets[i])], "predicted": classes[predicted]}
        row |= {"probability": round(float(probs[i, predicted]), 6), "loss": round(float(losses[i]), 6)}
        rows.append(row if row["path"] is not None else {k: v for k, v in row.items() if k != "path"})
    return rows


def plot_top_losses(rows: list[dict[str, Any]], images: list[torch.Tensor], path: Path, title: str) -> None:
    """A grid of the images (as the model saw them, before normalization), each titled true / predicted / p."""
    plt = pyplot()
    columns = min(4, max(1, len(rows)))
    lines = max(1, -(-len(rows) // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(3.1 * columns, 3.3 * lines + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, image in zip(axes.flat, rows, images, strict=False):
        pixels = image.permute(1, 2, 0).numpy()
        gray = pixels.shape[2] == 1
        ax.imshow(pixels[..., 0] if gray else pixels, cmap="gray" if gray else None, vmin=0, vmax=255)
        color = "tab:red" if row["true"] != row["predicted"] else "tab:green"
        ax.set_title(
            f"true: {_short(row['true'])}\npred: {_short(row['predicted'])} p={row['probability']:.2f}\n"
            f"loss {row['loss']:.2f}",
            fontsize=9,
            color=color,
        )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # below the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability(probs: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float], list[int]]:
    """Top-label reliability over ECE_BINS equal-width confidence bins (sklearn's calibration_curve): the mean
    confidence, the accuracy and the count of each non-empty bin."""
    import numpy as np
    from sklearn.calibration import calibration_curve

    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == targets).numpy().astype(int)
    conf = confidence.clamp(0, 1).numpy()
    accuracy, mean_conf = calibration_curve(correct, conf, n_bins=ECE_BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    counts = np.bincount(np.clip(np.searchsorted(edges[1:-1], conf, side="right"), 0, ECE_BINS - 1))
    return mean_conf.tolist(), accuracy.tolist(), [int(c) for c in counts if c > 0]


def plot_calibration(curves: dict[str, tuple[torch.Tensor, float]], targets: torch.Tensor, path: Path, title: str):
    """Reliability diagram: accuracy against confidence per bin for each probability set (label -> (probs, ECE)),
    the diagonal a perfectly calibrated model would follow, and how many images each bin holds."""
    plt = pyplot()
    fig, (diagram, counts) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    diagram.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for (label, (probs, ece)), marker in zip(curves.items(), ("o-", "s-"), strict=False):
        confidence, accuracy, sizes = reliability(probs, targets)
        line = diagram.plot(confidence, accuracy, marker, label=f"{label}: ECE {ece:.4f}")[0]
        counts.bar(confidence, sizes, width=1 / ECE_BINS * 0.8, alpha=0.5, color=line.get_color(), label=label)
    diagram.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    diagram.grid(alpha=0.3)
    diagram.legend(fontsize=8, loc="upper left")
    counts.set(xlabel=f"confidence (top-label, {ECE_BINS} bins)", ylabel="images")
    counts.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    return name if len(name) <= 18 else name[:17] + "…"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt

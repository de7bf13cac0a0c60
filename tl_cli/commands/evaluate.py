"""`tlcli eval`: accuracy, top-5, macro-F1, per-class precision/recall, a confusion matrix, the top losses, the most
confused pairs and calibration (ECE, reliability diagram) of a trained model; tta=true averages views.

By default the run's own dataset and seed are used, so `split=test` is exactly the split training held out.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tl_cli.data.datamodule import sample_path, samples_at
from tl_cli.errors import TlcliError, choose_from
from tl_cli.hardware import resolve_workers
from tl_cli.reporting.diagnostics import (
    CALIBRATION_PNG,
    TOP_LOSSES_PNG,
    most_confused,
    plot_calibration,
    plot_top_losses,
    top_losses,
)
from tl_cli.run.trained import (
    Inference,
    TrainedModel,
    build_split,
    device_of,
    inference_for,
    load_model,
    output_folder,
    require,
    run_data_config,
    run_seed,
)
from tl_cli.run.tta import PLAIN, combine, view_logits, views_of
from tl_cli.transfer.calibration import ece

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")
USAGE = "tlcli eval ckpt=<run dir or .ckpt> [split=test|val|train|all] [data=<name> data.root=...] [tta=true]"


def main(cfg: DictConfig) -> float:
    """Evaluate, write metrics.json, confusion_matrix.png, top_losses.png and calibration.png; returns the accuracy
    (for sweeps)."""
    views = check_settings(cfg)
    model = load_model(cfg.ckpt)
    device = device_of(cfg.device)
    inference = inference_for(cfg.precision, model, device)
    data_cfg = eval_data_config(cfg, model)
    seed = cfg.seed if cfg.seed is not None else run_seed(model)
    dataset, data_classes = build_split(data_cfg, model, seed, cfg.split)
    if not model.labels_known and len(data_classes) == len(model.classes):
        log.warning("no labels.json: taking the dataset's class names, in its order: %s", data_classes)
        model.classes = data_classes
    to_model = class_index_map(data_classes, model.classes)

    workers = eval_workers(dataset, data_cfg.num_workers, device)
    start = time.perf_counter()
    logits, targets = infer(model.net, dataset, cfg.batch_size, workers, inference, views)
    seconds = time.perf_counter() - start
    targets = to_model[targets]
    scores = combine(logits) if cfg.tta else logits[0]  # with TTA: log of the views' mean softmax
    metrics, per_class, matrix = compute_metrics(scores, targets, len(model.classes))
    temperature = model.temperature if cfg.calibrate else None
    probabilities = calibration_metrics(metrics, logits, scores, targets, temperature)

    out = output_folder(model, cfg.output_dir, "eval")
    png = out / "confusion_matrix.png"
    title = f"{data_cfg.name} / {cfg.split}: {len(targets)} images, acc {metrics['acc']:.4f}"
    plot_confusion_matrix(matrix, model.classes, png, title)
    report = {
        "ckpt": str(cfg.ckpt),
        "weights": str(model.weights),
        "dataset": data_cfg.name,
        "data_root": data_cfg.root,
        "split": cfg.split,
        "seed": seed,
        "num_images": len(targets),
        "tta": bool(cfg.tta),
        "tta_views": list(views),
        "temperature": temperature,  # null: no calibrated probabilities (calibrate=false, or none fitted)
        "metrics": metrics,
        "per_class": {
            name: {key: per_class[key][i] for key in ("precision", "recall", "support")}
            for i, name in enumerate(model.classes)
        },
        "classes": model.classes,
        "confusion_matrix": matrix.tolist(),  # rows: true class, columns: predicted class
        "confusion_matrix_png": png.name,
        "most_confused": most_confused(matrix, model.classes),  # [true, predicted, count], most frequent first
        **write_views(out, cfg.top_losses, dataset, scores, targets, model.classes, probabilities, title),
        "seconds": round(seconds, 3),
        **inference.record(),  # precision and channels_last the network ran at
    }
    write_report(out, report)
    return metrics["acc"]


def eval_workers(dataset: Dataset, setting: object, device: torch.device) -> int:
    """DataLoader workers for the pass. A stream read by several workers interleaves their shards; read in one
    process its order is the same in every pass, so the top losses find their images again (samples_at)."""
    return 0 if isinstance(dataset, IterableDataset) else resolve_workers(setting, device.type)


def write_report(out: Path, report: dict[str, Any]) -> None:
    """metrics.json, the printed report, and the files written, last line `metrics: <path>`."""
    path = out / "metrics.json"
    path.write_text(json.dumps(report, indent=2))
    print_report(report)
    for name in ("confusion_matrix", "top_losses", "calibration"):
        print(f"{name}: {out / report[name + '_png']}", flush=True)
    print(f"metrics: {path}", flush=True)


def check_settings(cfg: DictConfig) -> tuple[str, ...]:
    """One-line errors for bad settings, before any work; returns the views to run."""
    require(cfg, ("ckpt",), USAGE)
    if cfg.split not in SPLITS:
        raise choose_from("split", cfg.split, SPLITS)
    for key, low in (("batch_size", 1), ("top_losses", 0)):
        if cfg[key] < low:
            raise TlcliError(f"{key}={cfg[key]} must be at least {low}")
    return views_of(cfg.tta, cfg.tta_views)


def calibration_metrics(
    metrics: dict[str, float],
    logits: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | None,
) -> dict[str, tuple[torch.Tensor, float]]:
    """Add `ece` (and `ece_calibrated` at the run's temperature) to metrics; returns the probability sets the
    reliability diagram draws, by label."""
    probs = scores.float().softmax(dim=1)
    metrics["ece"] = ece(probs, targets)
    sets = {"model": (probs, metrics["ece"])}
    if temperature is not None:
        calibrated = combine(logits, temperature).softmax(dim=1)
        metrics["ece_calibrated"] = ece(calibrated, targets)
        sets[f"temperature {temperature:.3g}"] = (calibrated, metrics["ece_calibrated"])
    return sets


def write_views(
    out: Path,
    count: int,
    dataset: Dataset,
    scores: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    probabilities: dict[str, tuple[torch.Tensor, float]],
    title: str,
) -> dict[str, Any]:
    """top_losses.png and calibration.png; returns their metrics.json entries."""
    rows = top_losses(scores, targets, classes, count, lambda i: sample_path(dataset, i))
    images = samples_at(dataset, [row["index"] for row in rows])
    plot_top_losses(rows, images, out / TOP_LOSSES_PNG, f"top losses: {title}")
    plot_calibration(probabilities, targets, out / CALIBRATION_PNG, f"reliability: {title}")
    return {"top_losses": rows, "top_losses_png": TOP_LOSSES_PNG, "calibration_png": CALIBRATION_PNG}


def eval_data_config(cfg: DictConfig, model: TrainedModel) -> DictConfig:
    """data=<name> when given, else the run's own data config; always without train augmentation."""
    data = OmegaConf.merge(cfg.data, {}) if cfg.data is not None else run_data_config(model)
    if data is None:
        raise TlcliError(f"ckpt={cfg.ckpt} carries no training data config; pick a dataset: data=<name> data.root=...")
    data.augment = False  # split=train is measured with the deterministic eval transform
    return data


def class_index_map(data_classes: list[str], model_classes: list[str]) -> torch.Tensor:
    """Dataset label -> model output index, by class name; names the model never saw are an error."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        shown = ", ".join(model_classes[:10]) + (", ..." if len(model_classes) > 10 else "")
        raise TlcliError(
            f"dataset class '{unknown[0]}' ({len(unknown)} of {len(data_classes)} names) is not in the checkpoint's "
            f"labels.json ({shown}); evaluate on data with the model's classes, or keep them with data.classes=[...]"
        )
    return torch.tensor([model_classes.index(c) for c in data_classes], dtype=torch.long)


@torch.inference_mode()
def infer(
    net: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    inference: Inference,
    views: tuple[str, ...] = PLAIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (views, images, classes) and labels of the whole dataset, in order."""
    net = inference.prepare(net)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    logits, targets = [], []
    for images, labels in loader:
        logits.append(view_logits(lambda x: inference.logits(net, x).cpu(), images, views))
        targets.append(torch.as_tensor(labels))
    return torch.cat(logits, dim=1), torch.cat(targets).long()


def compute_metrics(
    logits: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[dict[str, float], dict[str, list[float]], torch.Tensor]:
    """(summary metrics, per-class precision/recall/support, confusion matrix) with torchmetrics."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    n = num_classes
    metrics = {"acc": float(multiclass_accuracy(logits, targets, n, average="micro"))}
    if n > 5:
        metrics["top5_acc"] = float(multiclass_accuracy(logits, targets, n, average="micro", top_k=5))
    # the names training logs (tl_cli/transfer/module.py EVAL_METRICS); macro: classes absent from both labels
    # and predictions are left out of the mean (torchmetrics)
    metrics["balanced_acc"] = float(multiclass_accuracy(logits, targets, n, average="macro"))
    metrics["f1_macro"] = float(multiclass_f1_score(logits, targets, n, average="macro"))
    metrics["loss"] = float(torch.nn.functional.cross_entropy(logits, targets))
    per_class = {
        "precision": multiclass_precision(logits, targets, n, average=None).tolist(),
        "recall": multiclass_recall(logits, targets, n, average=None).tolist(),
        "support": torch.bincount(targets, minlength=n).tolist(),
    }
    return metrics, per_class, multiclass_confusion_matrix(logits, targets, n)


def plot_confusion_matrix(matrix: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """Counts, coloured by the fraction of each true class, class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    counts = matrix.numpy()
    fractions = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(classes)
    side = min(4 + 0.45 * n, 40)
    names = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="true class", title=title)
    font = max(5, 11 - n // 10)
    tilt = n > 4 and max(len(c) for c in names) > 2  # long names side by side would overlap
    ax.set_xticklabels(names, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    if n <= 40:  # beyond that the numbers would not be legible
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if fractions[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=font)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_report(report: dict[str, Any]) -> None:
    """Headline metrics, and the per-class table when it is short enough to read."""
    print(
        f"eval {report['dataset']}/{report['split']}: {report['num_images']} images at {report['precision']}",
        flush=True,
    )
    for key, value in report["metrics"].items():
        print(f"{key}: {value:.4f}")
    if len(report["per_class"]) <= 20:
        width = max(5, *(len(c) for c in report["per_class"]))
        print(f"{'class':<{width}}  precision  recall  support")
        for name, row in report["per_class"].items():
            print(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['support']:7d}")

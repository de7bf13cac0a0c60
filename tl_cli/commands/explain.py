"""`tlcli explain`: where a trained model looks. One Grad-CAM overlay PNG per image (pytorch-grad-cam), titled with
the predicted class, or with `target=<class>` that class's evidence; explain.json lists them.

Unreadable files are reported on one line each and skipped; the last line is `explain_dir: <folder>`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from tl_cli.data.inputs import ImageFiles, collate, collect_inputs, shown
from tl_cli.errors import TlcliError, choose_from
from tl_cli.extras import EXPLAIN
from tl_cli.extras import require as require_extra
from tl_cli.reporting.heatmaps import heatmaps, plot_overlay, target_layer
from tl_cli.run.trained import TrainedModel, device_of, load_model, output_folder, require

log = logging.getLogger(__name__)

USAGE = "tlcli explain ckpt=<run dir or .ckpt> images=<image file, folder or glob> [target=<class>] [layer=<module>]"


def main(cfg: DictConfig) -> str:
    """Write the overlays and explain.json; returns the folder."""
    require(cfg, ("ckpt", "images"), USAGE)
    require_extra(EXPLAIN)  # before any work: pytorch-grad-cam is the `explain` extra
    if cfg.batch_size < 1:
        raise TlcliError(f"batch_size={cfg.batch_size} must be at least 1")
    paths = collect_inputs(cfg.images, key="images")
    model = load_model(cfg.ckpt)
    target = class_index(cfg.target, model.classes)
    device = device_of(cfg.device)
    net = model.net.to(device).eval()
    name, layer = target_layer(net.backbone, tuple(model.data_config["input_size"]), cfg.layer)
    out = output_folder(model, cfg.output_dir, "explain")
    dataset = ImageFiles(paths, model.eval_transform(), model.image_mode)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate, shuffle=False)
    records: list[dict[str, Any]] = []
    skipped, used = 0, set()
    for indices, images, bad in loader:
        for index, reason in bad:
            log.warning("skipped %s: %s", paths[index], reason)
        skipped += len(bad)
        if images is not None:
            files = [paths[i] for i in indices]
            records += explain_batch(model, layer, images.to(device), files, target, out, used, cfg.calibrate)
    if not records:
        raise TlcliError(f"none of the {len(paths)} files could be read as an image; check images={shown(cfg.images)}")
    (out / "explain.json").write_text(json.dumps({"layer": name, "images": records}, indent=2))
    print(f"explained {len(records)} images (Grad-CAM on {name}), skipped {skipped} unreadable files", flush=True)
    print(f"explain_dir: {out}", flush=True)
    return str(out)


def class_index(target: Any, classes: list[str]) -> int | None:
    """`target=<class name or index>`: the class explained instead of the predicted one (None: the predicted)."""
    if target is None:
        return None
    if str(target) in classes:
        return classes.index(str(target))
    if isinstance(target, int) and 0 <= target < len(classes):
        return target
    raise choose_from("target class", target, classes)


def explain_batch(
    model: TrainedModel,
    layer: torch.nn.Module,
    images: torch.Tensor,
    files: list[str],
    target: int | None,
    out: Path,
    used: set[str],
    calibrated: bool,
) -> list[dict[str, Any]]:
    """Predict, draw one overlay per image for its class (target, else the predicted one); their records."""
    inputs = model.normalize()(images)
    with torch.no_grad():
        probs = model.probabilities(model.net(inputs), calibrated).cpu()
    predicted = probs.argmax(dim=1).tolist()
    explained = [target if target is not None else p for p in predicted]
    cams = heatmaps(model.net, layer, inputs, explained)
    records = []
    for i, file in enumerate(files):
        png = out / unique_name(Path(file).stem, used)
        title = f"predicted: {model.classes[predicted[i]]} (p={probs[i, predicted[i]]:.2f})"
        if target is not None:
            title += f"   explained: {model.classes[target]} (p={probs[i, target]:.2f})"
        empty = not cams[i].max() > 0  # Grad-CAM keeps positive evidence only: none at this layer
        if empty:
            title += "\n(no positive evidence at this layer: try layer=<an earlier stage>)"
        plot_overlay(images[i].cpu(), cams[i], png, title)
        records.append(
            {
                "image": file,
                "png": png.name,
                "predicted": model.classes[predicted[i]],
                "probability": round(float(probs[i, predicted[i]]), 6),
                "explained": model.classes[explained[i]],
                "empty_map": empty,
            }
        )
    return records


def unique_name(stem: str, used: set[str]) -> str:
    """<stem>.png, or <stem>_2.png, ... when an earlier image of this command had the same name."""
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}.png"
    used.add(name)
    return name

"""`tlcli predict`: classify image files with a trained model, in batches, through its own eval transform.

Files that cannot be read as images are reported, skipped and counted; they never stop the run. Scores are softmax
probabilities at the run's fitted temperature (calibrate=false: the raw softmax); tta=true averages views.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from tl_cli.data.inputs import ImageFiles, collate, collect_inputs, shown
from tl_cli.errors import TlcliError
from tl_cli.hardware import resolve_workers
from tl_cli.run.trained import device_of, inference_for, load_model, require
from tl_cli.run.tta import combine, view_logits, views_of
from tl_cli.transfer.calibration import calibrated_line

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "score", "topk_labels", "topk_scores")
SEPARATOR = "|"  # joins the top-k labels and scores inside one CSV cell
USAGE = (
    "tlcli predict ckpt=<run dir or .ckpt> inputs=<image file, folder or glob> [topk=5] [output=preds.csv] "
    "[tta=true] [calibrate=false]"
)


def main(cfg: DictConfig) -> int:
    """Write the predictions CSV; returns the number of images predicted."""
    require(cfg, ("ckpt", "inputs"), USAGE)
    for key, low in (("topk", 1), ("batch_size", 1)):
        if cfg[key] < low:
            raise TlcliError(f"{key}={cfg[key]} must be at least {low}")
    device = device_of(cfg.device)
    workers = resolve_workers(cfg.num_workers, device.type, name="num_workers")
    views = views_of(cfg.tta, cfg.tta_views)
    paths = collect_inputs(cfg.inputs)
    model = load_model(cfg.ckpt)
    inference = inference_for(cfg.precision, model, device)
    net = inference.prepare(model.net)
    temperature = model.temperature if cfg.calibrate else None

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        logits = view_logits(lambda x: inference.logits(net, x), images, views)
        return combine(logits, temperature or 1.0).exp() if cfg.tta else model.probabilities(logits[0], cfg.calibrate)

    k = min(cfg.topk, len(model.classes))
    dataset = ImageFiles(paths, model.eval_transform(), model.image_mode)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate, shuffle=False)
    output = Path(cfg.output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")  # never leave a half-written CSV under the real name

    start = time.perf_counter()
    done, skipped = write_predictions(loader, paths, probabilities, model.classes, k, partial)
    seconds = time.perf_counter() - start
    if not done:
        partial.unlink()
        raise TlcliError(
            f"none of the {len(paths)} input files could be read as an image (e.g. {skipped[0]}); "
            f"check inputs={shown(cfg.inputs)}"
        )
    partial.replace(output)
    print(
        f"predicted {done} images, skipped {len(skipped)} unreadable files, in {seconds:.2f} s "
        f"({done / seconds:.1f} images/s) at precision={inference.precision}"
        + (f", tta over {'+'.join(views)}" if cfg.tta else ""),
        flush=True,
    )
    print(calibrated_line(temperature, cfg.calibrate), flush=True)
    print(f"predictions: {output}", flush=True)
    return done


def write_predictions(
    loader: DataLoader,
    paths: list[str],
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    classes: list[str],
    k: int,
    partial: Path,
) -> tuple[int, list[str]]:
    """Top-k rows of every readable image into the CSV `partial`; returns (images predicted, files skipped)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    done, skipped = 0, []
    quiet = len(paths) <= loader.batch_size or not sys.stderr.isatty()  # a log file gets no redrawn bar
    with (
        open(partial, "w", newline="") as f,
        logging_redirect_tqdm(),  # skip warnings print above the bar, not through it
        tqdm(total=len(paths), unit="img", file=sys.stderr, disable=quiet) as bar,
        torch.inference_mode(),
    ):
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for indices, images, bad in loader:
            for index, reason in bad:
                log.warning("skipped %s: %s", paths[index], reason)
                skipped.append(paths[index])
            if images is not None:
                scores, labels = probabilities(images).topk(k, dim=1)
                for index, row_scores, row_labels in zip(indices, scores.tolist(), labels.tolist(), strict=True):
                    names = [classes[c] for c in row_labels]
                    top = (SEPARATOR.join(names), SEPARATOR.join(f"{s:.6f}" for s in row_scores))
                    writer.writerow([paths[index], names[0], f"{row_scores[0]:.6f}", *top])
                done += len(indices)
            bar.update(len(indices) + len(bad))
    return done, skipped

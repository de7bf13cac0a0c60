"""Calibration: top-label ECE (torchmetrics) and temperature scaling, one scalar fitted on held-out logits.

A run's temperature is fitted on its val split after training and stored in calibration.json
(tl_cli/rundir.py); eval reports ECE with and without it, predict and export use it for their probabilities.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tl_cli.rundir import CALIBRATION

log = logging.getLogger(__name__)

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # a perfectly separated val set drives T to 0; the bound keeps it finite


@dataclass
class Calibration:
    """calibration.json: what was fitted, on what, and what it changed there."""

    temperature: float
    split: str
    images: int
    ece: float  # before: softmax(logits)
    ece_calibrated: float  # after: softmax(logits / temperature)
    nll: float
    nll_calibrated: float


def ece(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-label expected calibration error over 15 equal-width confidence bins (torchmetrics, L1)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    error = multiclass_calibration_error(probs.float(), targets, probs.shape[1], n_bins=ECE_BINS, norm="l1")
    return float(error)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T, float64); 1.0 if that does not
    beat T = 1."""
    logits, targets = logits.double(), targets.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")
    low, high = (torch.tensor(v, dtype=torch.float64).log() for v in TEMPERATURE_RANGE)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.clamp(low, high).exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().clamp(low, high).exp())
    if not nll(logits, targets, temperature) < nll(logits, targets, 1.0):
        return 1.0
    return temperature


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, targets.long()))


def calibrate(logits: torch.Tensor, targets: torch.Tensor, split: str) -> Calibration:
    """Fit the temperature on these logits and measure ECE and NLL before and after."""
    temperature = fit_temperature(logits, targets)
    return Calibration(
        temperature=round(temperature, 6),
        split=split,
        images=len(targets),
        ece=ece(logits.float().softmax(dim=1), targets),
        ece_calibrated=ece((logits.float() / temperature).softmax(dim=1), targets),
        nll=nll(logits, targets),
        nll_calibrated=nll(logits, targets, temperature),
    )


def write_calibration(folder: Path, calibration: Calibration) -> Path:
    path = folder / CALIBRATION
    path.write_text(json.dumps(asdict(calibration), indent=2))
    return path


def read_temperature(folder: Path | None) -> float | None:
    """The run's fitted temperature; None when it has none (calibrate=false, no val split, an older run)."""
    path = folder / CALIBRATION if folder else None
    if path is None or not path.is_file():
        return None
    try:
        value = float(json.loads(path.read_text())["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring %s: no readable temperature in it", path)
        return None
    return value if value > 0 else None


def calibrated_line(temperature: float | None, asked: bool) -> str:
    """`calibrated: true|false (why)`: whether the scores are at the run's fitted temperature."""
    if temperature is not None:
        return f"calibrated: true (temperature {temperature:.4g}, fitted on the run's val split)"
    return f"calibrated: false ({'the run has no fitted temperature' if asked else 'calibrate=false'})"

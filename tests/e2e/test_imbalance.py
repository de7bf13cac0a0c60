"""Class imbalance (issue 15) through real `tlcli` runs on an imbalanced image folder: the balanced sampler and
# slow: the balanced sampler and class weights end to end (make test-all and CI run them)
pytestmark = pytest.mark.slow


class weights train from cached features, balanced accuracy and macro F1 reach metrics.csv and summary.json, a run
monitoring val/balanced_acc keeps its best checkpoint by it, and a bad monitor is a one-line error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from tests.conftest import assert_one_line_error, run_dir_of, summary_of

# the embedded source (grayscale), frozen: the head trains on cached features in seconds
FREEZE = ["experiment=smoke", "model=embedded", "strategy=freeze", "data=image_folder", "data.augment=false"]
NEW_METRICS = ("balanced_acc", "f1_macro")


def write_imbalanced(root: Path) -> None:
    """root/<split>/<class>/*.png: dark and bright noise images (learnable, not trivially), 40 dark and 4 bright
    in train, 12 and 4 in val and test (so accuracy and balanced accuracy differ)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    counts = {"train": {"dark": 40, "bright": 4}, "val": {"dark": 12, "bright": 4}, "test": {"dark": 12, "bright": 4}}
    for split, classes in counts.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            mean = 100 if name == "dark" else 150
            for i in range(count):
                pixels = np.clip(rng.normal(mean, 50, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_balanced_sampler_and_weights_train_and_the_best_checkpoint_is_chosen_by_balanced_accuracy(
    tlcli, tmp_path: Path
) -> None:
    write_imbalanced(tmp_path / "data")
    result = tlcli(
        "train", *FREEZE, f"data.root={tmp_path / 'data'}", "data.sampler=balanced", "data.class_weights=balanced",
        "callbacks.model_checkpoint.monitor=val/balanced_acc", "trainer.max_epochs=6", "optim.min_steps=60",
    )  # fmt: skip
    run = run_dir_of(result)
    log = result.stdout + result.stderr
    assert "feature cache on" in log  # the sampler serves cached features
    assert "data.class_weights=balanced (train loss): bright 5.5, dark 0.55" in log  # 44 / (2 x 4), 44 / (2 x 40)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    epochs = [r for r in rows if r["val/acc"]]
    assert len(epochs) == 6 and all(r[f"val/{m}"] for r in epochs for m in NEW_METRICS)
    summary = summary_of(run)
    for split in ("val", "test"):
        assert all(0 <= summary["metrics"][f"{split}/{m}"] <= 1 for m in NEW_METRICS)
    # the best checkpoint: the first epoch with the highest val/balanced_acc, its score in summary.json
    scores = [float(r["val/balanced_acc"]) for r in epochs]
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == scores.index(max(scores))
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/balanced_acc" and float(state["best_model_score"]) == max(scores)
    assert summary["metrics"]["val/balanced_acc"] == max(scores)
    assert summary["best_checkpoint"] == "checkpoints/best.ckpt"


def test_an_unknown_monitor_is_a_one_line_error_naming_the_valid_ones(tlcli) -> None:
    result = tlcli("train", "experiment=smoke", "callbacks.model_checkpoint.monitor=val/f1")
    assert_one_line_error(
        result, "callbacks.model_checkpoint.monitor 'val/f1'", "val/acc, val/balanced_acc, val/f1_macro, val/loss"
    )

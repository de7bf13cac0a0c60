"""Seeing what a model learned, on real `tlcli` runs: curves.png, eval's top losses / calibration / most confused,
the run's temperature in predict and export, TTA, and `tlcli explain` heat maps for a ResNet and a ViT."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import KEEP_EPOCHS, TLCLI, assert_one_line_error, run_dir_of

# tiny test_resnet on a real image folder (so top losses have paths), 3 epochs; every epoch's checkpoint kept for
# the resume check. fp32: eval reproduces the same numbers
CLASSES = {"cat": 16, "dog": 16, "fox": 16}
TRAIN = ["train", "experiment=smoke", "strategy=finetune", "trainer.max_epochs=3", "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("see_model")
    write_marked_images(folder / "data", CLASSES)
    return folder


def write_marked_images(root: Path, classes: dict[str, int], size: int = 32) -> None:
    """Real PNGs in root/<class>/<i>.png: dim noise with a bright square whose corner tells the class, so a few
    epochs learn where to look."""
    rng = np.random.default_rng(0)
    corners = [(2, 2), (2, size - 14), (size - 14, 2), (size - 14, size - 14)]
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            top, left = corners[c % len(corners)]
            pixels[top : top + 12, left : left + 12] = 230
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def cli(work: Path) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "TLCLI_OUTPUT_DIR": str(work / "outputs")}
        env.pop("TLCLI_DEBUG", None)
        return subprocess.run([str(TLCLI), *args], capture_output=True, text=True, env=env, timeout=600, cwd=work)

    return run


@pytest.fixture(scope="module")
def run(cli, work: Path) -> Path:
    """One ResNet run shared by the tests here."""
    data = ["data=image_folder", f"data.root={work / 'data'}", "data.augment=false"]
    return run_dir_of(cli(*TRAIN, *data, *KEEP_EPOCHS, f"hydra.run.dir={work / 'run'}"))


@pytest.fixture(scope="module")
def evaluated(cli, run: Path) -> dict:
    return json.loads(last_line(cli("eval", f"ckpt={run}"), "metrics").read_text())


def last_line(result: subprocess.CompletedProcess, key: str) -> Path:
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{key}: "), last
    return Path(last.removeprefix(f"{key}: "))


def assert_png(path: Path, min_side: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side, (path, image.size)
        image.load()  # decodes: a truncated file fails here


def csv_epochs(path: Path) -> set[int]:
    with open(path) as f:
        return {int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc")}


def test_train_draws_curves_and_fits_a_temperature_on_val(run: Path) -> None:
    assert_png(run / "curves.png")
    calibration = json.loads((run / "calibration.json").read_text())
    assert (
        calibration["split"] == "val"
        and calibration["images"] == json.loads((run / "summary.json").read_text())["split_sizes"]["val"]
    )
    assert calibration["temperature"] > 0
    assert 0 <= calibration["ece"] <= 1 and 0 <= calibration["ece_calibrated"] <= 1
    assert calibration["nll_calibrated"] <= calibration["nll"]  # what the temperature minimises, on val


def test_a_resumed_run_draws_all_its_epochs(cli, run: Path, work: Path) -> None:
    """A kill after epoch 0 leaves its config, that epoch's last.ckpt and the rows flushed so far."""
    killed = work / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / ".hydra", killed / ".hydra")
    shutil.copy(run / "epochs" / "e0.ckpt", killed / "checkpoints" / "last.ckpt")
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    with open(killed / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["epoch"] in ("", "0") and not r.get("test/acc"))
    assert csv_epochs(killed / "metrics.csv") == {0}
    assert run_dir_of(cli("train", f"resume={killed}")) == killed
    assert csv_epochs(killed / "metrics.csv") == {0, 1, 2}  # Lightning's CSVLogger would have kept {1, 2}
    assert_png(killed / "curves.png")


def test_eval_writes_top_losses_calibration_and_most_confused(evaluated: dict, run: Path, work: Path) -> None:
    metrics = evaluated["metrics"]
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_calibrated"] <= 1
    assert evaluated["temperature"] == json.loads((run / "calibration.json").read_text())["temperature"]
    assert evaluated["tta"] is False and evaluated["tta_views"] == ["identity"]
    for name in ("confusion_matrix.png", "top_losses.png", "calibration.png"):
        assert_png(run / "eval" / name)
    # most_confused: every off-diagonal count of the confusion matrix, most frequent first
    matrix, classes = np.array(evaluated["confusion_matrix"]), evaluated["classes"]
    confused = evaluated["most_confused"]
    assert sum(c for _, _, c in confused) == matrix.sum() - np.trace(matrix)
    assert [c for _, _, c in confused] == sorted((c for _, _, c in confused), reverse=True)
    for true, predicted, count in confused:
        assert true != predicted and matrix[classes.index(true), classes.index(predicted)] == count
    # top losses: the highest-loss test images, with their files, true and predicted classes
    top = evaluated["top_losses"]
    assert len(top) == min(16, evaluated["num_images"])
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    for t in top:
        path = Path(t["path"])
        assert path.is_file() and path.parent.name == t["true"] and path.is_relative_to(work / "data")
        assert t["predicted"] in classes and 0 < t["probability"] <= 1


def test_tta_with_only_the_identity_view_equals_plain_eval(cli, run: Path, work: Path, evaluated: dict) -> None:
    out = work / "tta_identity"
    report = json.loads(
        last_line(
            cli("eval", f"ckpt={run}", "tta=true", "tta_views=[identity]", f"output_dir={out}"), "metrics"
        ).read_text()
    )
    assert report["tta"] is True and report["tta_views"] == ["identity"]
    assert report["confusion_matrix"] == evaluated["confusion_matrix"]
    for key, value in evaluated["metrics"].items():
        assert report["metrics"][key] == pytest.approx(value, abs=1e-5), key


def test_predict_and_export_use_the_runs_temperature(cli, run: Path, work: Path) -> None:
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    images = work / "data" / "cat"
    scores = {}
    for calibrate in ("true", "false"):
        out = work / f"preds_{calibrate}.csv"
        result = cli("predict", f"ckpt={run}", f"inputs={images}", f"calibrate={calibrate}", f"output={out}")
        assert last_line(result, "predictions") == out
        assert f"calibrated: {calibrate}" in result.stdout
        with open(out) as f:
            scores[calibrate] = [[float(s) for s in row["topk_scores"].split("|")] for row in csv.DictReader(f)]
    # the same ranking; softmax(z / T) is softmax(z) with each log-probability gap scaled by 1 / T
    for calibrated, raw in zip(scores["true"], scores["false"], strict=True):
        gaps = np.log(raw[0]) - np.log(raw[1:]), np.log(calibrated[0]) - np.log(calibrated[1:])
        assert gaps[1] == pytest.approx(gaps[0] / temperature, rel=1e-2, abs=1e-3)
    result = cli("export", f"ckpt={run}", "format=safetensors", f"output_dir={work / 'export'}")
    assert last_line(result, "exported") == work / "export" / "model.safetensors"
    assert "calibrated: true" in result.stdout
    preprocess = json.loads((work / "export" / "preprocess.json").read_text())
    assert preprocess["calibrated"] is True and preprocess["temperature"] == temperature


def test_explain_writes_one_heat_map_per_image_for_a_resnet(cli, run: Path, work: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("cat/0.png", "dog/0.png", "fox/3.png"):
        shutil.copy(work / "data" / name, images / name.replace("/", "_"))
    (images / "broken.png").write_text("not an image")
    result = cli("explain", f"ckpt={run}", f"images={images}")
    folder = last_line(result, "explain_dir")
    assert folder == run / "explain"
    assert [line for line in result.stderr.splitlines() if "skipped" in line and "broken.png" in line]
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["cat_0.png", "dog_0.png", "fox_3.png"]
    for png in pngs:
        assert_png(folder / png)
    records = json.loads((folder / "explain.json").read_text())["images"]
    assert all(r["explained"] == r["predicted"] for r in records)
    # target=<class> explains that class in every image
    again = cli("explain", f"ckpt={run}", f"images={images}", "target=fox", f"output_dir={tmp_path / 'fox'}")
    records = json.loads((last_line(again, "explain_dir") / "explain.json").read_text())["images"]
    assert [r["explained"] for r in records] == ["fox"] * 3


def test_explain_bad_input_is_one_line(cli, run: Path, work: Path) -> None:
    image = work / "data" / "cat" / "0.png"
    assert_one_line_error(cli("explain", f"ckpt={run}", f"images={image}", "target=wolf"), "target class 'wolf'", "fox")
    assert_one_line_error(cli("explain", f"ckpt={run}", f"images={work / 'nope.png'}"), "images=", "nope.png")


def test_heat_maps_differ_between_two_images(run: Path, work: Path) -> None:
    """Grad-CAM of the same trained network, each image for its predicted class: two different images give
    different maps, one image twice the same map."""
    from tl_cli.errors import TlcliError
    from tl_cli.reporting.heatmaps import heatmaps, target_layer
    from tl_cli.run.trained import load_model

    model = load_model(str(run))
    size = tuple(model.data_config["input_size"])
    name, layer = target_layer(model.net.backbone, size, None)
    assert name == "layer2"  # 32 px: layer3 and layer4 would be 2 x 2 and 1 x 1
    with pytest.raises(TlcliError, match="layer=layer9 is not a module"):
        target_layer(model.net.backbone, size, "layer9")
    transform = model.eval_transform()
    paths = [work / "data" / "cat" / "0.png", work / "data" / "dog" / "1.png", work / "data" / "cat" / "0.png"]
    batch = model.normalize()(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))
    with torch.no_grad():
        predicted = model.net(batch).argmax(dim=1).tolist()
    cams = heatmaps(model.net, layer, batch, predicted)
    assert cams.shape == (3, *batch.shape[2:]) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert cams[0].std() > 0 and cams[1].std() > 0  # maps, not constants
    assert not np.allclose(cams[0], cams[1], atol=1e-3)
    assert np.allclose(cams[0], cams[2], atol=1e-5)


def test_explain_a_vit(cli, work: Path, tmp_path: Path) -> None:
    """test_vit at 64 px: a 4 x 4 patch grid behind the class token."""
    data = ["data=synthetic", "model.backbone=test_vit", "model.img_size=64", "data.image_size=64"]
    vit = run_dir_of(cli(*TRAIN, *data, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'vit'}"))
    images = work / "data" / "dog"
    folder = last_line(cli("explain", f"ckpt={vit}", f"images={images}", "batch_size=8"), "explain_dir")
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(p.name for p in images.glob("*.png"))
    assert json.loads((folder / "explain.json").read_text())["layer"] == "blocks.5.norm1"
    assert_png(folder / "0.png")

"""Using a trained model: `tlcli eval`, `predict` and `export` as real subprocess runs, alone and chained."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import USE_SHORT, USE_TRAIN, assert_one_line_error, last_line, run_dir_of, summary_of, tlcli_runner

# the embedded Fashion-MNIST source model on synthetic data (4 classes), one epoch: seconds on 2 cores.
# float32 like eval, so eval must reproduce training's own test metrics (CPU training may default to bf16)
TRAIN, SHORT = USE_TRAIN, USE_SHORT
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("use_model")


@pytest.fixture(scope="module")
def cli(work: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`tlcli` for module-scoped fixtures (conftest's `tlcli` is per test); cwd is an empty folder, so anything a
    command leaves behind there is visible."""
    (work / "cwd").mkdir()
    return tlcli_runner(work / "outputs", work / "cwd")


@pytest.fixture(scope="module")
def trained(cli) -> Path:
    """One training run shared by every test here."""
    return run_dir_of(cli(*TRAIN, *SHORT))


@pytest.fixture(scope="module")
def images(work: Path) -> list[Path]:
    """Six real images: sklearn's handwritten digits as 8x8 grayscale PNGs."""
    from sklearn.datasets import load_digits

    folder = work / "images"
    (folder / "more").mkdir(parents=True)
    digits = np.clip(load_digits().images[:6] * (255 / 16), 0, 255).astype(np.uint8)
    paths = [folder / ("more" if i % 2 else "") / f"digit_{i}.png" for i in range(len(digits))]
    for path, image in zip(paths, digits, strict=True):
        Image.fromarray(image).save(path)
    return sorted(paths)


@pytest.fixture(scope="module")
def export(cli, trained: Path, work: Path) -> Callable[[str], subprocess.CompletedProcess]:
    """`tlcli export` of the shared run, once per format."""
    done: dict[str, subprocess.CompletedProcess] = {}

    def run(fmt: str) -> subprocess.CompletedProcess:
        if fmt not in done:
            done[fmt] = cli("export", f"ckpt={trained}", f"format={fmt}", f"output_dir={work / 'export'}")
        return done[fmt]

    return run


def through_eval_transform(run: Path, paths: list[Path]) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trained PyTorch network and these images through its own eval transform (per image, then per batch)."""
    from tl_cli.run.trained import load_model

    model = load_model(str(run))
    transform = model.eval_transform()
    batch = torch.stack([transform(Image.open(p).convert(model.image_mode)) for p in paths])
    return model.net, model.normalize()(batch)


def test_eval_of_a_run_dir_reproduces_its_test_metrics(cli, trained: Path, work: Path) -> None:
    metrics_path = last_line(cli("eval", f"ckpt={trained}"), "metrics")
    assert metrics_path == trained / "eval" / "metrics.json"
    report = json.loads(metrics_path.read_text())
    summary = summary_of(trained)
    # same data, seed and weights as training's test step: the same numbers
    assert report["split"] == "test" and report["num_images"] == summary["split_sizes"]["test"]
    assert report["metrics"]["acc"] == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)
    assert report["metrics"]["loss"] == pytest.approx(summary["metrics"]["test/loss"], abs=1e-4)
    assert "top5_acc" not in report["metrics"]  # 4 classes
    for name in ("balanced_acc", "f1_macro"):  # training's names, and its values
        assert report["metrics"][name] == pytest.approx(summary["metrics"][f"test/{name}"], abs=1e-6)
    labels = json.loads((trained / "labels.json").read_text())
    assert list(report["per_class"]) == labels
    assert sum(row["support"] for row in report["per_class"].values()) == report["num_images"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix.sum() == report["num_images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["metrics"]["acc"])
    png = trained / "eval" / "confusion_matrix.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) >= 400
    assert not list((work / "cwd").iterdir())  # no Hydra run folder, .hydra/ or log file


def test_eval_refuses_a_dataset_with_other_classes(tlcli, trained: Path) -> None:
    # trained on synthetic class_0..class_3; digits are named 0..9
    result = tlcli("eval", f"ckpt={trained}", "data=digits")
    assert_one_line_error(result, "dataset class '0'", "labels.json", "class_0")


def test_eval_bad_input_is_one_line(tlcli, trained: Path, tmp_path: Path) -> None:
    assert_one_line_error(tlcli("eval"), "ckpt is required")
    assert_one_line_error(tlcli("eval", f"ckpt={tmp_path / 'nope'}"), "nope", "does not exist")
    assert_one_line_error(tlcli("eval", f"ckpt={trained}", "data.root=/x"), "data.root=/x", "data=<name>")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_matches_pytorch(export, trained: Path, work: Path, images: list[Path], fmt: str) -> None:
    result = export(fmt)
    path = last_line(result, "exported")
    assert path == work / "export" / FILES[fmt]
    assert f"parity {fmt}: max abs diff" in result.stdout
    out = path.parent
    assert json.loads((out / "labels.json").read_text()) == json.loads((trained / "labels.json").read_text())
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["input_size"] == [1, 32, 32] and preprocess["mean"] == [0.5] and preprocess["crop_pct"] == 1.0
    assert {"interpolation", "std"} <= set(preprocess)

    net, batch = through_eval_transform(trained, images)
    with torch.no_grad():
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

            def exported(x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        elif fmt == "torchscript":
            exported = torch.jit.load(str(path))
        else:
            from tl_cli.run.trained import load_model

            exported = load_model(str(path)).net  # rebuilt from the file alone (no run dir)
        for x in (batch, batch[:1]):  # dynamic batch dimension
            diff = (exported(x) - net(x)).abs().max().item()
            assert diff <= 1e-4, (fmt, len(x), diff)


def test_train_export_predict(cli, export, work: Path, images: list[Path]) -> None:
    """Predict with the exported standalone safetensors; it must agree with the exported ONNX model."""
    folder = images[0].parent
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    last_line(export("safetensors"), "exported")
    onnx_path = last_line(export("onnx"), "exported")

    out = work / "preds.csv"
    result = cli(
        "predict", f"ckpt={work / 'export' / 'model.safetensors'}", f"inputs={folder}", "topk=3", f"output={out}"
    )
    assert last_line(result, "predictions") == out
    assert "predicted 6 images, skipped 2 unreadable files" in result.stdout
    for bad in ("empty.png", "truncated.png"):
        assert f"skipped {folder / bad}" in result.stderr
    assert f"ignored 1 file(s) under inputs={folder} that are not images" in result.stderr  # the same set as train
    assert str(folder / "notes.txt") in result.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "score", "topk_labels", "topk_scores"]
    assert [Path(r["path"]) for r in rows] == images  # recursive, in order
    labels = json.loads((work / "export" / "labels.json").read_text())

    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _, batch = through_eval_transform(work / "export" / "model.safetensors", images)
    # predict's scores are calibrated: softmax(logits / the run's temperature, which export embeds)
    temperature = json.loads((work / "export" / "preprocess.json").read_text())["temperature"]
    assert temperature > 0 and "calibrated: true" in result.stdout
    probs = (torch.from_numpy(session.run(None, {"input": batch.numpy()})[0]) / temperature).softmax(dim=1)
    for row, p in zip(rows, probs, strict=True):
        top = p.topk(3)
        assert row["topk_labels"].split("|") == [labels[i] for i in top.indices]
        assert row["label"] == labels[int(top.indices[0])]
        assert float(row["score"]) == pytest.approx(float(top.values[0]), abs=1e-5)
        assert [float(s) for s in row["topk_scores"].split("|")] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert not list((work / "cwd").iterdir())


def test_predict_with_only_bad_files_is_one_line(tlcli, trained: Path, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_text("not a jpeg")
    result = tlcli("predict", f"ckpt={trained}", f"inputs={tmp_path / 'bad' / '*.jpg'}")
    assert_one_line_error(result, "none of the 1 input files", "a.jpg")
    assert not (tmp_path / "predictions.csv").exists()


def test_chained_train_then_eval(cli, trained: Path) -> None:
    """Transfer the first run's backbone to a 6-class task, then evaluate the new run from its checkpoint."""
    second = run_dir_of(cli(*TRAIN[:3], "strategy=freeze", f"model.weights={trained}", "data.num_classes=6", *SHORT))
    summary = summary_of(second)
    assert summary["weights"] == str(trained / "model.safetensors")
    metrics_path = last_line(cli("eval", f"ckpt={second}/checkpoints/best.ckpt", "split=val"), "metrics")
    report = json.loads(metrics_path.read_text())
    assert report["split"] == "val" and report["num_images"] == summary["split_sizes"]["val"]
    assert report["metrics"]["acc"] == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)
    assert report["metrics"]["top5_acc"] >= report["metrics"]["acc"]  # 6 classes: top-5 is reported
    assert len(report["per_class"]) == 6

"""`tlcli export`: a trained model as one standalone file (ONNX, TorchScript or safetensors).

labels.json and preprocess.json go beside it; the run's fitted softmax temperature goes into preprocess.json and
the model's metadata (calibrate=false leaves it out). The batch dimension is dynamic. Every export is checked against
the PyTorch model on real test-split images (batch N and batch 1) and the max abs difference is printed.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tl_cli.errors import TlcliError, choose_from
from tl_cli.extras import ONNX
from tl_cli.extras import require as require_extra
from tl_cli.run.trained import (
    ARCH_KEY,
    TEMPERATURE_KEY,
    TrainedModel,
    build_split,
    load_model,
    output_folder,
    require,
    run_data_config,
    run_seed,
)
from tl_cli.rundir import LABELS, MODEL, PREPROCESS
from tl_cli.transfer.calibration import calibrated_line

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": MODEL}
TOLERANCE = 1e-4  # max abs logit difference an export may show against PyTorch
USAGE = "tlcli export ckpt=<run dir or .ckpt> format=onnx|torchscript|safetensors [output_dir=...]"


def main(cfg: DictConfig) -> str:
    """Write the model file, labels.json and preprocess.json; returns the model file's path."""
    require(cfg, ("ckpt",), USAGE)
    if cfg.format not in FILES:
        raise choose_from("format", cfg.format, FILES)
    if cfg.format == "onnx":  # before any work: the onnx packages are the `export` extra
        require_extra(ONNX)
    if cfg.check_images < 1:
        raise TlcliError(f"check_images={cfg.check_images} must be at least 1")
    model = load_model(cfg.ckpt)
    out = output_folder(model, cfg.output_dir, "export")
    path = out / FILES[cfg.format]
    if path == model.weights:
        raise TlcliError(f"output_dir={out} would overwrite the model being exported; pick another output_dir")
    images, what = check_inputs(model, cfg.check_images)
    if not cfg.calibrate:
        model.temperature = None  # nothing embedded: consumers take the plain softmax

    (out / LABELS).write_text(json.dumps(model.classes, indent=1))
    (out / PREPROCESS).write_text(json.dumps(preprocess(model), indent=2))
    {"onnx": export_onnx, "torchscript": export_torchscript, "safetensors": export_safetensors}[cfg.format](
        model, images, path, cfg
    )
    diff = max_abs_diff(cfg.format, path, model, images)
    print(
        f"parity {cfg.format}: max abs diff {diff:.3g} vs PyTorch on {len(images)} {what} (batch {len(images)} and 1)"
    )
    if not diff <= TOLERANCE:  # also catches NaN
        raise TlcliError(f"exported {path} differs from the PyTorch model by {diff:.3g} > {TOLERANCE}; not usable")
    print(calibrated_line(model.temperature, cfg.calibrate), flush=True)
    print(f"exported: {path}", flush=True)
    return str(path)


def preprocess(model: TrainedModel) -> dict[str, Any]:
    """What a consumer must do to an image before the model: timm's eval transform settings."""
    info = {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}
    info["image_mode"] = model.image_mode  # PIL mode: "L" (grayscale) or "RGB"
    info["input_name"], info["output_name"] = "input", "logits"
    # probabilities = softmax(logits / temperature): the temperature fitted on the run's val split
    info["calibrated"], info["temperature"] = model.temperature is not None, model.temperature
    return info


def check_inputs(model: TrainedModel, count: int) -> tuple[torch.Tensor, str]:
    """Up to `count` test-split images of the run's own dataset through its eval transform; random inputs
    (with a warning) when the dataset is not available here."""
    data = run_data_config(model)
    if data is not None:
        try:
            dataset, _ = build_split(data, model, run_seed(model), "test")
            images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
            return model.normalize()(images), f"{data.name} test images"
        except TlcliError as ex:
            log.warning("parity check on random inputs: the run's data is not available (%s)", ex)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, *model.data_config["input_size"], generator=generator), "random inputs"


def export_onnx(model: TrainedModel, images: torch.Tensor, path: Path, cfg: DictConfig) -> None:
    import onnx

    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, but it exports these
        # models with a dynamic batch axis and needs no onnxscript; its tracer warnings are expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.net,
            (images,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=cfg.opset,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in _metadata(model).items():  # self-describing: consumers need no side files
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_torchscript(model: TrainedModel, images: torch.Tensor, path: Path, cfg: DictConfig) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the portable C++ format
        traced = torch.jit.trace(model.net, images, check_trace=False)  # max_abs_diff checks it, on 2 batch sizes
        torch.jit.save(traced, str(path), _extra_files={k + ".json": v for k, v in _metadata(model).items()})


def export_safetensors(model: TrainedModel, images: torch.Tensor, path: Path, cfg: DictConfig) -> None:
    from tl_cli.transfer.weights import save_network

    save_network(model.net, path, {"format": "tlcli", **_metadata(model)})


def _metadata(model: TrainedModel) -> dict[str, str]:
    temperature = {TEMPERATURE_KEY: repr(model.temperature)} if model.temperature is not None else {}
    return {
        ARCH_KEY: json.dumps(model.arch),
        "labels": json.dumps(model.classes),
        "preprocess": json.dumps(preprocess(model)),
        "backbone": model.arch["backbone"],
        **temperature,  # load_model reads it back from an exported model.safetensors
    }


@torch.no_grad()
def max_abs_diff(fmt: str, path: Path, model: TrainedModel, images: torch.Tensor) -> float:
    """Largest |exported - PyTorch| logit over the whole batch and over a batch of one (dynamic batch axis)."""
    model.net.cpu().eval()
    expected = model.net(images)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(path), map_location="cpu")
        run = scripted
    else:
        run = load_model(str(path)).net  # rebuilt from the file's own metadata: proves it stands alone
    full = (run(images) - expected).abs().max()
    # against PyTorch at batch 1 too: kernels differ with the batch size, which is not an export error
    single = (run(images[:1]) - model.net(images[:1])).abs().max()
    return float(max(full, single))

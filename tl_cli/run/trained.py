"""Load a trained tlcli model for eval, predict and export.

Accepted: a run directory, one of its Lightning checkpoints (`checkpoints/*.ckpt`), or a model.safetensors
(a run's own, or one written by `tlcli export format=safetensors`, whose metadata describes the network).
Weights are read with safetensors or torch.load(weights_only=True) and loaded strictly: nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import Dataset

from tl_cli import hardware
from tl_cli.errors import TlcliError
from tl_cli.rundir import CHECKPOINTS, CONFIG, LABELS, MODEL, PREPROCESS, SUMMARY, RunDir
from tl_cli.transfer.calibration import read_temperature
from tl_cli.transfer.network import TransferNet

log = logging.getLogger(__name__)

ARCH_KEY = "tlcli_arch"  # safetensors metadata key of an exported model: the architecture as JSON
TEMPERATURE_KEY = "temperature"  # exported model metadata: the run's softmax temperature (absent: uncalibrated)
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed")  # eval's and predict's `precision=`


@dataclass
class TrainedModel:
    """A trained network in eval mode, with what is needed to feed it and name its outputs."""

    net: TransferNet
    classes: list[str]
    data_config: dict[str, Any]  # timm data config: input_size, mean, std, interpolation, crop_pct, ...
    arch: dict[str, Any]  # everything build_net needs to rebuild the network
    config: DictConfig | None  # the run's composed train config (None for an exported model)
    run_dir: Path | None
    weights: Path  # the file the weights came from
    labels_known: bool = True  # False: no labels.json was found, classes are placeholders class_<i>
    temperature: float | None = None  # softmax temperature fitted on the run's val split (None: not calibrated)

    def probabilities(self, logits: torch.Tensor, calibrated: bool) -> torch.Tensor:
        """softmax(logits / temperature) when calibrated and the run has a temperature, else softmax(logits)."""
        temperature = self.temperature if calibrated and self.temperature else 1.0
        return (logits.float() / temperature).softmax(dim=-1)

    @property
    def image_mode(self) -> str:
        """PIL mode the eval transform expects: one channel is grayscale."""
        return "L" if int(self.data_config["input_size"][0]) == 1 else "RGB"

    def eval_transform(self):
        """timm's eval transform, per image up to uint8 (Inference.logits normalizes each batch)."""
        from tl_cli.data.transforms import eval_transform

        return eval_transform(self.data_config)

    def normalize(self):
        """The per-batch half of eval_transform: uint8 batches to the normalized float input the network takes."""
        from tl_cli.data.transforms import BatchNormalize

        return BatchNormalize.for_data(self.data_config)


def load_model(ckpt: str) -> TrainedModel:
    """Resolve `ckpt` (run dir, .ckpt, model.safetensors), rebuild the network, load its weights strictly."""
    run_dir, weights = resolve(ckpt)
    if weights.suffix == ".ckpt":
        state, hparams = _read_lightning_checkpoint(weights)
        config = _as_config(hparams.get("config")) or _run_config(run_dir)
        metadata: dict[str, str] = {}
    else:
        state, metadata = _read_safetensors(weights)
        config = _run_config(run_dir) if ARCH_KEY not in metadata else None
    if ARCH_KEY in metadata:
        arch = json.loads(metadata[ARCH_KEY])
    elif config is not None:
        arch = architecture(config, num_classes=_num_classes(state, weights))
    else:
        raise TlcliError(
            f"ckpt={ckpt}: no training config found for {weights.name} (expected {weights.parent / CONFIG} "
            f"or a Lightning .ckpt); pass the tlcli run directory"
        )
    net = build_net(arch)
    load_strict(net, state, weights)
    folder = run_dir or weights.parent
    classes = _classes(folder, arch["num_classes"], weights)
    data_config = _data_config(folder, net, config, arch)
    known = classes is not None
    classes = classes or [f"class_{i}" for i in range(arch["num_classes"])]
    temperature = float(metadata[TEMPERATURE_KEY]) if TEMPERATURE_KEY in metadata else read_temperature(run_dir)
    log.info("loaded %s (%s, %d classes) from %s", arch["backbone"], _describe(arch), len(classes), weights)
    return TrainedModel(net.eval(), classes, data_config, arch, config, run_dir, weights, known, temperature)


def require(cfg: DictConfig, keys: tuple[str, ...], usage: str) -> None:
    """A one-line error naming a mandatory key left unset (Hydra's ??? value)."""
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise TlcliError(f"{key} is required: {usage}")


def device_of(name: str) -> torch.device:
    """`auto`: the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TlcliError(f"device={name} is not a torch device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TlcliError(f"device={name} but no CUDA GPU is available; use device=cpu")
    return device


@dataclass(frozen=True)
class Inference:
    """How eval and predict run the network: on which device, at which precision, in which memory format, and
    how uint8 image batches are normalized there."""

    device: torch.device
    precision: str  # 32-true, or a 16-bit one run under torch.autocast (bf16-mixed, 16-mixed)
    channels_last: bool
    reason: str
    normalize: Any  # the model's BatchNormalize (tl_cli/data/transforms.py)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """The network on the device, in eval mode and in the chosen memory format."""
        net = net.to(self.device).eval()
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def logits(self, net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """fp32 logits of one batch of uint8 images through a prepared network (call under torch.inference_mode)."""
        images = self.normalize(images.to(self.device))
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = hardware.autocast_dtype(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return net(images).float()

    def record(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last}


def inference_for(setting: object, model: TrainedModel, device: torch.device) -> Inference:
    """`precision=auto`: the run's own precision and model.channels_last, re-resolved for this device by train's
    rule (hardware.resolve), so a bf16 run on a CPU without native bf16 runs in fp32 as train's `auto` would there.
    `32` / `bf16-mixed` / `16-mixed` force one."""
    text = str(setting).strip().lower()
    if text not in PRECISIONS:
        raise TlcliError(f"precision={setting} is not valid; use {', '.join(PRECISIONS)}")
    ran = run_precision(model)
    if text != "auto":
        requested, why = ("32-true" if text == "32" else text), f"precision={setting} given"
    elif ran is None:
        requested, why = "32-true", "no record of the run's precision (exported model): fp32"
    else:  # a 16-bit run is re-resolved for this device, exactly as trainer.precision=auto would be
        requested, why = ("auto" if ran == "auto" or hardware.is_16bit(ran) else "32-true"), f"the run trained at {ran}"
    if requested == "16-mixed" and device.type != "cuda":
        raise TlcliError(f"precision={setting} needs a CUDA GPU; on the CPU use precision=bf16-mixed or 32")
    config = model.config if model.config is not None else OmegaConf.create()
    channels_last = OmegaConf.select(config, "model.channels_last", default="auto")
    precision, use_channels_last, rule = hardware.resolve(requested, channels_last, device.type)
    if requested == "auto":
        why = f"{why}; {rule}"
    log.info("precision=%s channels_last=%s (%s)", precision, use_channels_last, why)
    return Inference(device, precision, use_channels_last, why, model.normalize())


def run_precision(model: TrainedModel) -> str | None:
    """The precision the run trained at: summary.json's (resolved), else its config's trainer.precision; None for
    an exported model."""
    summary = RunDir(model.run_dir).read_summary() if model.run_dir else None
    if summary and summary.get("precision"):
        return str(summary["precision"])
    precision = OmegaConf.select(model.config, "trainer.precision") if model.config is not None else None
    return str(precision) if precision is not None else None


def output_folder(model: TrainedModel, override: str | None, name: str) -> Path:
    """`override` when given, else <run_dir>/<name> (or beside the weights file when there is no run dir)."""
    folder = Path(override).expanduser() if override else (model.run_dir or model.weights.parent) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def resolve(ckpt: str) -> tuple[Path | None, Path]:
    """(run directory or None, weights file) for a run dir, a .ckpt or a .safetensors path."""
    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        weights = RunDir(path).weights_file()
        if weights is None:
            raise TlcliError(
                f"ckpt={ckpt} is a folder without {MODEL} or {CHECKPOINTS}/*.ckpt; pass a tlcli run directory"
            )
        return path.resolve(), weights.resolve()
    if not path.is_file():
        raise TlcliError(f"ckpt={ckpt} does not exist; pass a tlcli run directory or its {CHECKPOINTS}/<name>.ckpt")
    if path.suffix not in (".ckpt", ".safetensors"):
        raise TlcliError(f"ckpt={ckpt} is not a .ckpt or .safetensors file; pass a tlcli run directory")
    run = RunDir.holding(path.resolve())
    return (run.path if run else None), path.resolve()


def architecture(config: DictConfig, num_classes: int) -> dict[str, Any]:
    """The network's shape from a train config: backbone, input, extension and head width."""
    from tl_cli.transfer.weights import fixed_input_size

    def get(key: str, default: Any = None) -> Any:
        value = OmegaConf.select(config, key, default=default)
        return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value

    backbone = get("model.backbone")
    if not backbone:
        raise TlcliError("the run's config has no model.backbone; is it a tlcli train run?")
    img_size = get("model.img_size")
    return {
        "backbone": backbone,
        "in_chans": int(get("model.in_chans", 3)),
        # timm takes img_size only for models with a fixed input size (position embeddings), as train does
        "img_size": img_size if img_size and fixed_input_size(backbone) else None,
        "kwargs": get("model.kwargs", {}) or {},
        "num_classes": int(num_classes),
        "hidden_dims": list(get("strategy.extension.hidden_dims", []) or []),
        "activation": get("strategy.extension.activation", "gelu"),
        "norm": get("strategy.extension.norm", "layernorm"),
        "dropout": float(get("strategy.extension.dropout", 0.0) or 0.0),
    }


def build_net(arch: dict[str, Any]) -> TransferNet:
    """A randomly initialised TransferNet of this architecture (weights come from load_strict)."""
    import timm

    from tl_cli.transfer.weights import check_backbone_name

    check_backbone_name(arch["backbone"])
    kwargs = dict(arch.get("kwargs") or {}, num_classes=0, in_chans=arch["in_chans"])
    if arch.get("img_size"):
        kwargs["img_size"] = arch["img_size"]
    backbone = timm.create_model(arch["backbone"], pretrained=False, **kwargs)
    return TransferNet(
        backbone, arch["num_classes"], arch["hidden_dims"], arch["activation"], arch["norm"], arch["dropout"]
    )


def load_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Every key present with the right shape, nothing extra; otherwise an error naming the first offender."""
    from tl_cli.transfer.weights import load_state_strict

    load_state_strict(net, state, f"weights {source} do not fit the network its config describes")


def _read_lightning_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from tl_cli.transfer.weights import read_torch_file

    ckpt = read_torch_file(path, "Lightning checkpoint", "pass a checkpoint written by tlcli train")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise TlcliError(f"{path} has no state_dict; pass a checkpoint written by tlcli train")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise TlcliError(f"{path} holds no 'net.*' weights; pass a checkpoint written by tlcli train")
    hparams = ckpt.get("hyper_parameters")
    return state, hparams if isinstance(hparams, dict) else {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from tl_cli.transfer.weights import read_safetensors

    return read_safetensors(path)


def _as_config(value: Any) -> DictConfig | None:
    return OmegaConf.create(value) if isinstance(value, dict) else None


def _run_config(run_dir: Path | None) -> DictConfig | None:
    from tl_cli.run.auto import trained_config

    path = run_dir / CONFIG if run_dir else None
    return trained_config(OmegaConf.load(path), run_dir) if path and path.is_file() else None  # type: ignore


def _num_classes(state: dict[str, torch.Tensor], source: Path) -> int:
    if "head.weight" not in state:
        raise TlcliError(f"{source} has no head.weight; pass a model written by tlcli train")
    return int(state["head.weight"].shape[0])


def _classes(folder: Path, num_classes: int, source: Path) -> list[str] | None:
    """labels.json beside the model, checked against the head width; None when there is none."""
    path = folder / LABELS
    if not path.is_file():
        log.warning("no labels.json next to %s: classes are named class_0..class_%d", source, num_classes - 1)
        return None
    classes = [str(c) for c in json.loads(path.read_text())]
    if len(classes) != num_classes:
        raise TlcliError(f"{path} names {len(classes)} classes but the model has {num_classes} outputs")
    return classes


def _data_config(folder: Path, net: TransferNet, config: DictConfig | None, arch: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing the model was trained with: summary.json or preprocess.json, else re-resolved."""
    for name, key in ((SUMMARY, "data_config"), (PREPROCESS, None)):
        path = folder / name
        if path.is_file():
            found = json.loads(path.read_text())
            found = found.get(key) if key else found
            if isinstance(found, dict) and "input_size" in found:
                return _clean(found)
    if config is None or OmegaConf.select(config, "data") is None:
        raise TlcliError(f"no {SUMMARY} or {PREPROCESS} in {folder}: cannot tell the model's preprocessing")
    from tl_cli.data.datamodule import resolve_data_config

    img_size = OmegaConf.select(config, "model.img_size")
    return _clean(resolve_data_config(net.backbone, config.data, arch["in_chans"], img_size))


def _clean(data_config: dict[str, Any]) -> dict[str, Any]:
    """timm's data-config keys only, with tuples (JSON stores lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items() if k in PREPROCESS_KEYS}


def _describe(arch: dict[str, Any]) -> str:
    return f"extension {arch['hidden_dims']}" if arch["hidden_dims"] else "no extension"


def run_data_config(model: TrainedModel) -> DictConfig | None:
    """The run's data config over today's schema defaults (a run from an older tlcli lacks newer keys)."""
    from tl_cli.config.schema import DataConfig

    if model.config is None or OmegaConf.select(model.config, "data") is None:
        return None
    saved = OmegaConf.to_container(model.config.data, resolve=False)
    known = {f.name for f in dataclasses.fields(DataConfig)}
    dropped = sorted(k for k in saved if k not in known)
    if dropped:
        log.warning("ignoring data keys this tlcli does not know: %s", ", ".join(dropped))
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {k: v for k, v in saved.items() if k not in dropped})
    data.augment = False
    return data


def run_seed(model: TrainedModel) -> int:
    """The seed the run was trained with: it decides which images its held-out splits contain."""
    seed = OmegaConf.select(model.config, "seed") if model.config is not None else None
    return int(seed or 0)


def build_split(data_cfg: DictConfig, model: TrainedModel, seed: int, split: str) -> tuple[Dataset, list[str]]:
    """The split's images through the model's own eval transform, and the dataset's class names."""
    from tl_cli.data.datamodule import make_datamodule

    datamodule = make_datamodule(data_cfg, dict(model.data_config), seed)
    dataset = datamodule.dataset(split)
    if len(dataset) == 0:
        raise TlcliError(f"split={split} of data={data_cfg.name} is empty; pick another split")
    log.info("%s/%s: %d images, %d classes", data_cfg.name, split, len(dataset), len(datamodule.classes))
    return dataset, list(datamodule.classes)

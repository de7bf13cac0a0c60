"""Source weights: timm's hub loading, local state dicts, and earlier tlcli runs (chained transfer).

Every source goes through timm's own `load_pretrained`, so each model's checkpoint filter runs, the old
classifier is dropped, the first conv is adapted to `in_chans` and position embeddings are resampled.
Nothing here unpickles arbitrary objects: tlcli reads local files itself (safetensors, or
torch.load(weights_only=True)) and hands timm the state dict.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from timm.models import _builder
from torch import nn

from tl_cli.errors import TlcliError, did_you_mean
from tl_cli.rundir import MODEL, RunDir

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo
_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)
_LOAD_LOCK = threading.Lock()  # timm's load_pretrained is wrapped for the duration of one create_model


def check_backbone_name(name: str) -> None:
    """Fail early, with a suggestion, on a model name timm does not know."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    arch = timm.models.split_model_name_tag(name)[0]
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models()) or " (see timm.list_models())"
        raise TlcliError(f"unknown timm backbone '{name}'{hint}; set model.backbone to a timm model name")


def create_backbone(name: str, weights: str | None, **kwargs: Any) -> tuple[nn.Module, str]:
    """A timm model without classifier (num_classes=0), with source weights; returns (model, source).

    `img_size` (the configured input size, or None for the model's own) goes to timm only for models whose
    parameters depend on it (pretrained_cfg fixed_input_size); for every model it is tried with one image."""
    check_backbone_name(name)
    img_size = kwargs.pop("img_size", None)
    kwargs = {"num_classes": 0, **kwargs}
    if img_size and fixed_input_size(name):
        kwargs["img_size"] = img_size
    if weights is None:
        model, source = _build(name, kwargs), "random init"
    elif weights == "hub":
        model, source = _hub_backbone(name, kwargs), f"hub:{name}"
    else:
        path = resolve_weights_path(weights)
        state_dict, source_backbone = read_source_state_dict(path)
        if source_backbone and source_backbone != name:
            raise TlcliError(
                f"model.weights={weights} holds a '{source_backbone}' backbone, not '{name}'; "
                f"set model.backbone={source_backbone} or pick other weights"
            )
        model, source = _load_with_timm(name, kwargs, str(path), state_dict), str(path)
    if img_size:
        check_runs_at(model, name, img_size, int(kwargs.get("in_chans", 3)))
    return model, source


def fixed_input_size(name: str) -> bool:
    """Whether the model's parameters depend on its input size (position embeddings, token MLPs): timm then
    takes an img_size argument."""
    cfg = timm.models.get_pretrained_cfg(name)
    return bool(cfg and getattr(cfg, "fixed_input_size", False))


def resolve_weights_path(weights: str) -> Path:
    """A weights file, or the weights file of a tlcli run directory (RunDir's order)."""
    path = Path(weights).expanduser()
    if path.is_dir():
        found = RunDir(path).weights_file()
        if found is None:
            raise TlcliError(f"model.weights={weights} is a folder without {MODEL}; pass a tlcli run directory")
        return found
    if not path.is_file():
        raise TlcliError(
            f"model.weights={weights} does not exist; use hub, null, a .safetensors/.pth/.ckpt file or a run dir"
        )
    return path


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a one-line error when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as ex:
        raise TlcliError(f"cannot read safetensors file {path}: {ex}; is it complete?") from None


def read_torch_file(path: Path, kind: str = "tensor state dict", fix: str = "convert it to .safetensors") -> Any:
    """torch.load(weights_only=True): tensors and plain containers only; anything else is refused, never run."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as ex:  # pickle payloads and foreign objects land here
        first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
        raise TlcliError(f"refusing to load {path}: not a plain {kind} ({first[:160]}); {fix}") from None


def read_source_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Backbone state dict (timm keys) and, when known, the backbone name it was trained as."""
    backbone = None
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
        backbone = metadata.get("backbone")
    else:
        state = read_torch_file(path)
        if isinstance(state, dict) and isinstance(state.get("hyper_parameters"), dict):
            backbone = state["hyper_parameters"].get("backbone")
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TlcliError(f"{path} is not a state dict of tensors; pass timm weights or a tlcli run")
    return _backbone_part(state), backbone


def _backbone_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip tlcli / Lightning / DDP prefixes down to timm's own keys."""
    for prefix in ("net.backbone.", "backbone.", "module."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def incompatibility(missing: list[str], unexpected: list[str], mismatched: list[tuple[str, str, str]]) -> str:
    """The strict-load report, one line: counts and the first offender of each kind ('' when it all fits)."""
    detail = []
    if mismatched:
        key, source_shape, model_shape = mismatched[0]
        detail.append(f"{len(mismatched)} shape mismatches (e.g. {key}: {source_shape} vs model {model_shape})")
    if missing:
        detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(detail)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every key present with the right shape, nothing extra; otherwise TlcliError('<what>: <report>')."""
    target = module.state_dict()
    mismatched = [
        (k, str(tuple(v.shape)), str(tuple(target[k].shape)))
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    detail = incompatibility([k for k in target if k not in state], [k for k in state if k not in target], mismatched)
    if detail:
        raise TlcliError(f"{what}: {detail}")
    module.load_state_dict(state, strict=True)


@dataclass
class _LoadReport:
    """What timm's load_pretrained did. timm loads with strict=False once it drops the classifier, so the real
    incompatible keys are taken from a load_state_dict post-hook."""

    called: bool = False  # load_pretrained ran (the model was built)
    hooked: bool = False  # load_state_dict ran (the checkpoint filter passed)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    classifiers: tuple[str, ...] = ()

    def record(self, module: nn.Module, incompatible: Any) -> None:
        self.hooked = True
        self.missing = list(incompatible.missing_keys)
        self.unexpected = list(incompatible.unexpected_keys)


@contextmanager
def _timm_loading(report: _LoadReport, state_dict: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Within: timm's load_pretrained reports into `report` and, given `state_dict`, loads that dict."""
    original = _builder.load_pretrained

    def load_pretrained(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None, **kw: Any) -> None:
        cfg = dict(pretrained_cfg or model.pretrained_cfg)
        report.called = True
        classifiers = cfg.get("classifier") or ()
        report.classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
        if state_dict is not None:
            # timm's highest-priority source. Set here rather than in pretrained_cfg_overlay: the overlay is
            # deep-copied (dataclasses.asdict) and kept in model.pretrained_cfg, a second copy of every tensor.
            cfg.update(state_dict=dict(state_dict), source=None, file=None, url=None, hf_hub_id=None)
            cfg.update(custom_load=False, input_size=_source_input_size(model, cfg, state_dict, kw.get("in_chans", 3)))
        kw["filter_fn"] = _then_resample_positions(kw.get("filter_fn"))
        handle = model.register_load_state_dict_post_hook(report.record)
        try:
            original(model, pretrained_cfg=cfg, **kw)
        finally:
            handle.remove()

    timm_log = logging.getLogger(_builder.__name__)
    with _LOAD_LOCK:
        _builder.load_pretrained = load_pretrained  # build_model_with_cfg looks it up at call time
        timm_log.addFilter(_key_lists_filter)  # tlcli reports the keys itself, the source's head as expected
        try:
            yield
        finally:
            _builder.load_pretrained = original
            timm_log.removeFilter(_key_lists_filter)


def _key_lists_filter(record: logging.LogRecord) -> bool:
    """Drop timm's 'Missing keys (...)' / 'Unexpected keys (...)' lines: _load_with_timm judges them."""
    return not str(record.msg).startswith(("Missing keys", "Unexpected keys"))


def _then_resample_positions(filter_fn: Any) -> Any:
    """The model's own checkpoint filter (called as timm calls it), then _resample_positions."""

    def filtered(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, model)
            except TypeError:  # older one-argument filters, as in timm's load_pretrained
                state_dict = filter_fn(state_dict)
        return _resample_positions(state_dict, model)

    return filtered


def _resample_positions(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Position tables that the model's filter left at the source's size (cait and pit pos_embed, gcvit
    relative_position_bias_table): resampled to the model's size with timm's own functions, as timm's
    filters do for ViT and Swin. Square grids only; anything else stays a shape mismatch."""
    from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc, resize_rel_pos_bias_table_levit

    target = model.state_dict()
    for key, value in list(state.items()):
        want, leaf = target.get(key), key.rsplit(".", 1)[-1]
        if want is None or value.shape == want.shape or value.ndim != want.ndim:
            continue
        if "pos_embed" in leaf and value.ndim == 4 and value.shape[:2] == want.shape[:2]:  # (1, C, H, W): PiT
            resized = nn.functional.interpolate(value.float(), size=tuple(want.shape[-2:]), mode="bicubic")
            state[key] = resized.to(value.dtype)
        elif "pos_embed" in leaf and value.ndim == 4 and value.shape[::3] == want.shape[::3]:  # (1, H, W, C): VOLO
            state[key] = resample_abs_pos_embed_nhwc(value, list(want.shape[1:3]))
        elif "pos_embed" in leaf and value.ndim == 3 and value.shape[::2] == want.shape[::2]:  # (1, N, C): CaiT
            for prefix in (0, 1, 2):  # class/distillation tokens ahead of the grid
                old, new = _square_side(value.shape[1] - prefix), _square_side(want.shape[1] - prefix)
                if old and new:
                    state[key] = resample_abs_pos_embed(value, [new, new], [old, old], num_prefix_tokens=prefix)
                    break
        elif leaf == "relative_position_bias_table" and value.ndim == 2 and value.shape[1] == want.shape[1]:
            if _square_side(value.shape[0]) and _square_side(want.shape[0]):  # (L, heads): GCViT windows
                state[key] = resize_rel_pos_bias_table_levit(value, tuple(want.shape))
    return state


def _square_side(n: int) -> int:
    """The side of an n-cell square grid; 0 when n is not a square."""
    side = round(n**0.5) if n > 0 else 0
    return side if side * side == n else 0


def _source_input_size(
    model: nn.Module, cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], in_chans: int
) -> tuple[int, ...]:
    """cfg's input_size with the source's own channel count (a tlcli run trained on grayscale is a 1-channel
    source), so that timm's adapt_input_conv converts from the right count. Inverts timm's stem check."""
    input_size = tuple(cfg.get("input_size") or (3, 224, 224))
    convs = cfg.get("first_conv") or ()
    for conv in (convs,) if isinstance(convs, str) else convs:
        weight = state_dict.get(f"{conv}.weight")
        try:
            module = model.get_submodule(conv)
        except AttributeError:
            continue
        if weight is None or weight.ndim != 4 or not isinstance(module, nn.Conv2d):
            continue
        chans, rest = divmod(weight.shape[1] * module.groups * in_chans, module.in_channels)
        if chans > 0 and rest == 0:
            return (chans, *input_size[1:])
    return input_size


def _load_with_timm(
    name: str,
    kwargs: dict[str, Any],
    label: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    overlay: dict[str, Any] | None = None,
    strict: bool = True,
) -> nn.Module:
    """timm.create_model(pretrained=True): the model's own checkpoint filter, classifier drop, in_chans
    adaptation and position-embedding resampling; then every backbone tensor must have been loaded."""
    report = _LoadReport()
    try:
        with _timm_loading(report, state_dict):
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as ex:  # noqa: BLE001 - every failure becomes one line naming its cause
        raise _load_error(name, kwargs, label, state_dict, report, ex) from None
    head = _head_prefixes(report.classifiers)
    dropped = [k for k in report.unexpected if k.startswith(head)]
    if dropped:  # the rest of the source's own classifier (an MLP head): not part of the backbone
        log.info("dropped %d tensors of the source's own head (e.g. %s)", len(dropped), dropped[0])
    unexpected = [k for k in report.unexpected if not k.startswith(head)]
    detail = incompatibility(report.missing, unexpected, [])
    if detail and strict:
        raise TlcliError(f"weights {label} do not fit backbone '{_arch(name)}': {detail}")
    if detail:
        log.warning("weights %s do not fit backbone '%s' exactly: %s", label, _arch(name), detail)
    return model


def _head_prefixes(classifiers: tuple[str, ...]) -> tuple[str, ...]:
    """Key prefixes of the source's head: the classifier's parent module (head.fc for caformer's head.fc.fc2),
    or the classifier itself when it sits at the top level (fc, head)."""
    return tuple((c.rpartition(".")[0] or c) + "." for c in classifiers)


def _load_error(
    name: str,
    kwargs: dict[str, Any],
    label: str,
    state_dict: dict[str, torch.Tensor] | None,
    report: _LoadReport,
    ex: Exception,
) -> TlcliError:
    """One line for a failed create-and-load: the model cannot be built, the input size is fixed, or the
    tensors do not fit."""
    first = _first_line(ex)
    if not report.called:
        return _build_error(name, kwargs, first)
    mismatched = [(k, _shape(a), _shape(b)) for k, a, b in _MISMATCH.findall(str(ex))]
    img_size, native = kwargs.get("img_size"), _native_size(timm.models.get_pretrained_cfg(name))
    if mismatched and img_size and img_size != native and state_dict is not None:
        try:  # the same tensors at the model's own size: if they fit there, the size is what does not adapt
            _load_with_timm(name, {**kwargs, "img_size": native}, label, state_dict)
            return TlcliError(f"{name} runs only at {native} px; set model.img_size={native}")
        except TlcliError:
            pass
    if mismatched or report.hooked:
        detail = incompatibility(report.missing, report.unexpected, mismatched)
        return TlcliError(f"weights {label} do not fit backbone '{_arch(name)}': {detail}")
    return TlcliError(f"weights {label} do not fit backbone '{_arch(name)}' ({first})")


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A randomly initialised timm model; a failure to build is one line."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as ex:  # noqa: BLE001 - bad kwargs or sizes reach the user as one line
        raise _build_error(name, kwargs, _first_line(ex)) from None


def _build_error(name: str, kwargs: dict[str, Any], first: str) -> TlcliError:
    if kwargs.get("img_size"):
        native = _native_size(timm.models.get_pretrained_cfg(name))
        return TlcliError(
            f"cannot build {name} for {kwargs['img_size']} px inputs ({first}); set model.img_size={native}"
        )
    return TlcliError(f"cannot build timm model {name} ({first}); check model.kwargs and model.in_chans")


def check_runs_at(model: nn.Module, name: str, img_size: int | tuple[int, int], in_chans: int) -> None:
    """One image at the configured size (eval, no grad): an input too small for the architecture is a
    one-line error naming the smallest size that runs, not a RuntimeError from deep inside the network."""
    error = _dry_forward(model, img_size, in_chans)
    if error is None:
        return
    native = _native_size(getattr(model, "pretrained_cfg", None))
    smallest = _smallest_size(model, img_size, native, in_chans) if isinstance(img_size, int) else None
    if smallest is not None:
        raise TlcliError(f"{name} needs inputs of at least {smallest} px; set model.img_size={smallest}")
    raise TlcliError(f"{name} does not run at {img_size} px ({error}); set model.img_size={native}")


def _smallest_size(model: nn.Module, failing: int, native: int, in_chans: int) -> int | None:
    """The smallest size between `failing` and the model's own that runs (bisection: ~8 one-image forwards)."""
    if failing >= native or _dry_forward(model, native, in_chans) is not None:
        return None  # e.g. a fixed-size model built for `failing`: other sizes do not tell anything
    low, high = failing, native
    while high - low > 1:
        mid = (low + high) // 2
        if _dry_forward(model, mid, in_chans) is None:
            high = mid
        else:
            low = mid
    return high


def _dry_forward(model: nn.Module, size: int | tuple[int, int], in_chans: int) -> str | None:
    """None when one zero image of this size goes through; else the error's first line. Eval mode (BN
    statistics untouched) under no_grad; the train/eval mode is restored."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, height, width, device=device, dtype=dtype))
        return None
    except Exception as ex:  # noqa: BLE001 - any failure at this size is reported, not raised
        return _first_line(ex)
    finally:
        model.train(was_training)


def _native_size(cfg: Any) -> int:
    """The size the model is defined at (pretrained_cfg input_size), 224 when unknown."""
    input_size = (cfg.get("input_size") if isinstance(cfg, dict) else getattr(cfg, "input_size", None)) or ()
    return int(input_size[-1]) if input_size else 224


def _arch(name: str) -> str:
    return timm.models.split_model_name_tag(name)[0] if not name.startswith(("hf-hub:", "hf_hub:")) else name


def _shape(text: str) -> str:
    return str(tuple(int(d) for d in text.strip("[]").split(",") if d.strip()))


def _first_line(ex: BaseException) -> str:
    lines = str(ex).strip().splitlines()
    return f"{type(ex).__name__}: {lines[0][:160]}" if lines else type(ex).__name__


def _hub_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained loading; served from the local HF cache when it has the file, and a clear
    error (not a hang) when the hub cannot be reached."""
    from huggingface_hub import constants, try_to_load_from_cache

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg else None
    if name.startswith(("hf-hub:", "hf_hub:")):
        hub_id = name.split(":", 1)[1]
    if pretrained_cfg is not None and not (hub_id or pretrained_cfg.url):
        raise TlcliError(f"timm has no pretrained weights for '{name}'; use model.weights=null or a weights file")
    if hub_id:
        for filename in _HUB_FILES:
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                log.info("loading %s pretrained weights from the local HF cache: %s", name, cached)
                return _load_with_timm(name, kwargs, cached, overlay={"file": cached}, strict=False)
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable(constants.ENDPOINT):
        why = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} cannot be reached"
        raise TlcliError(
            f"model.weights=hub: no cached weights for '{name}' and {why}; "
            f"use a local file instead: model.weights=/path/to/weights.safetensors (or null for random init)"
        )
    return _load_with_timm(name, kwargs, f"hub:{name}", strict=False)


def _hub_reachable(endpoint: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """TCP probe of the hub with a hard time limit (DNS included), so offline never hangs."""
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def save_network(net: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """model.safetensors with backbone./extension./head. keys; written to a temp file, then renamed."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(
        tensors,
        str(tmp),
        metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()},
    )
    os.replace(tmp, path)
    os.chmod(path, 0o644)  # safetensors writes 0600; run outputs are meant to be shared

"""Source weights: timm's hub loading, local state dicts, and earlier tlcli runs (chained transfer).

Nothing here unpickles arbitrary objects: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from tl_cli.errors import TlcliError, did_you_mean

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0
MODEL_FILE = "model.safetensors"  # run-dir file written by tlcli train
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo


def check_backbone_name(name: str) -> None:
    """Fail early, with a suggestion, on a model name timm does not know."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    arch = timm.models.split_model_name_tag(name)[0]
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models()) or " (see timm.list_models())"
        raise TlcliError(f"unknown timm backbone '{name}'{hint}; set model.backbone to a timm model name")


def create_backbone(name: str, weights: str | None, **kwargs: Any) -> tuple[nn.Module, str]:
    """A timm model without classifier (num_classes=0), with source weights; returns (model, source)."""
    check_backbone_name(name)
    kwargs = {"num_classes": 0, **kwargs}
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs), "random init"
    if weights == "hub":
        return _hub_backbone(name, kwargs), f"hub:{name}"
    path = resolve_weights_path(weights)
    state_dict, source_backbone = read_source_state_dict(path)
    if source_backbone and source_backbone != name:
        raise TlcliError(
            f"model.weights={weights} holds a '{source_backbone}' backbone, not '{name}'; "
            f"set model.backbone={source_backbone} or pick other weights"
        )
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_backbone_state(model, state_dict, source=str(path))
    return model, str(path)


def resolve_weights_path(weights: str) -> Path:
    """A weights file, or the model file inside a tlcli run directory."""
    path = Path(weights).expanduser()
    if path.is_dir():
        for candidate in (path / MODEL_FILE, path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise TlcliError(f"model.weights={weights} is a folder without {MODEL_FILE}; pass a tlcli run directory")
    if not path.is_file():
        raise TlcliError(
            f"model.weights={weights} does not exist; use hub, null, a .safetensors/.pth/.ckpt file or a run dir"
        )
    return path


def read_source_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Backbone state dict (timm keys) and, when known, the backbone name it was trained as."""
    backbone = None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                backbone = (f.metadata() or {}).get("backbone")
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as ex:
            raise TlcliError(f"cannot read safetensors file {path}: {ex}; is it complete?") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as ex:  # pickle payloads and foreign objects land here
            first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
            raise TlcliError(
                f"refusing to load {path}: not a plain tensor state dict ({first[:160]}); convert it to .safetensors"
            ) from None
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


def load_backbone_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a timm-keyed state dict into a num_classes=0 model: drop the old classifier, adapt the
    first conv to model.in_chans (timm's adapt_input_conv), then require every backbone key."""
    from timm.models import adapt_input_conv

    state = dict(state_dict)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifiers = cfg.get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own per-architecture remapping (pos-embed resize, old formats)
        try:
            state = filter_fn(state, model)
        except Exception as ex:  # a filter that does not apply to this state dict is not fatal
            log.debug("checkpoint_filter_fn skipped: %s", ex)
    first_convs = cfg.get("first_conv") or ()
    target = model.state_dict()
    for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
        key = f"{conv}.weight"
        if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
            state[key] = adapt_input_conv(target[key].shape[1], state[key])
    mismatched = [k for k, v in state.items() if k in target and v.shape != target[k].shape]
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if mismatched or missing or unexpected:
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs model "
                f"{tuple(target[k].shape)})"
            )
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        arch = cfg.get("architecture", type(model).__name__)
        raise TlcliError(f"weights {source} do not fit backbone '{arch}': {'; '.join(detail)}")
    model.load_state_dict(state, strict=True)


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
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in (
        "1",
        "true",
        "yes",
    )
    if offline or not _hub_reachable(constants.ENDPOINT):
        why = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} cannot be reached"
        raise TlcliError(
            f"model.weights=hub: no cached weights for '{name}' and {why}; "
            f"use a local file instead: model.weights=/path/to/weights.safetensors (or null for random init)"
        )
    return timm.create_model(name, pretrained=True, **kwargs)


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

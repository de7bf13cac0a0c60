"""What the transfer strategies do to a network (`apply_strategy`) and its optimizer's parameter groups. The
strategies themselves, as data, are tl_cli/config/strategies.py (re-exported here)."""

from __future__ import annotations

import math

from tl_cli.config.strategies import (  # noqa: F401 (re-exported for the modules that act on strategies)
    STRATEGIES,
    Strategy,
    check_extension,
    get_strategy,
    help_text,
    transfer_strategy,
)


def apply_strategy(strategy: Strategy, net) -> None:
    """Freeze what the strategy keeps fixed. Frozen modules stay in eval mode (see TransferNet.train)."""
    if not strategy.train_backbone:
        net.freeze("backbone")


def param_groups(
    net, lr: float, backbone_lr_mult: float, weight_decay: float, layer_decay: float | None = None
) -> list[dict]:
    """Optimizer groups over trainable parameters only: backbone at lr * mult, new layers at lr.

    timm's `param_groups_weight_decay` keeps weight decay off norms and biases. With `layer_decay`, the backbone's
    groups come from timm's `param_groups_layer_decay` instead (layers by its `group_matcher`, as
    `timm.optim.create_optimizer_v2(layer_decay=...)` makes them): layer i of n at lr * mult * decay^(n - 1 - i).
    """
    groups = []
    for part, part_lr in (("backbone", lr * backbone_lr_mult), ("extension", lr), ("head", lr)):
        module = getattr(net, part)
        no_decay = getattr(module, "no_weight_decay", lambda: set())()
        # layer_decay=1 scales every layer by 1: the plain groups give the same LRs
        decay = layer_decay if part == "backbone" and layer_decay != 1 else None
        for group in _timm_groups(module, weight_decay, no_decay, decay):
            if group["params"]:
                # the LR is set here: torch's LambdaLR scales each group's own lr (timm's lr_scale key is read
                # only by timm's schedulers)
                scale = group.pop("lr_scale", 1.0)
                name = f"{part}{_depth_name(scale, decay)}{'' if group['weight_decay'] else '_no_wd'}"
                groups.append({**group, "lr": part_lr * scale, "name": name})
    return groups


def _timm_groups(module, weight_decay: float, no_decay: set[str], layer_decay: float | None) -> list[dict]:
    """timm's weight-decay groups, or its layer-decay groups (each with an lr_scale); both skip frozen params."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    if layer_decay is None:
        return param_groups_weight_decay(module, weight_decay, no_weight_decay_list=no_decay)
    return param_groups_layer_decay(module, weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay)


def _depth_name(scale: float, layer_decay: float | None) -> str:
    """'_depth<k>' for the layer k below the backbone's last (lr scale decay^k, decay < 1): group names must be
    unique for Lightning's LearningRateMonitor."""
    return "" if layer_decay is None else f"_depth{round(math.log(scale) / math.log(layer_decay))}"

"""The transfer strategies, all in one place.

A strategy is data: which weights the network starts from, whether the source network trains,
and whether new hidden layers are added. `apply_strategy` is the one place that acts on it.
Everything else is derived from `STRATEGIES`: the presets configs/strategy/<name>.yaml must match it
(tests/unit/test_configs.py), the study report orders its columns by it, strategy=auto's table picks from it
(`transfer_strategy`), and `tlcli train --help` lists each strategy's `when` (`help_text`).

| strategy         | start from     | trains                 | extension |
|------------------|----------------|------------------------|-----------|
| freeze           | source weights | head only              | no        |
| finetune         | source weights | everything             | no        |
| extend_freeze    | source weights | extension + head       | yes       |
| extend_finetune  | source weights | everything             | yes       |
| scratch          | random init    | everything             | optional  |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tl_cli.errors import TlcliError, choose_from


@dataclass(frozen=True)
class Strategy:
    name: str
    use_source_weights: bool  # load model.weights into the backbone
    train_backbone: bool  # False: backbone frozen (requires_grad=False, kept in eval mode)
    extension: str  # "required" | "forbidden" | "optional"
    when: str  # one-line advice, shown by `tlcli train --help`


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("freeze", True, False, "forbidden", "small data, task similar to the source's"),
        Strategy("finetune", True, True, "forbidden", "large data, similar task"),
        Strategy("extend_freeze", True, False, "required", "small data, task needs extra features"),
        Strategy("extend_finetune", True, True, "required", "large data, task needs extra features"),
        Strategy("scratch", False, True, "optional", "baseline: what did transfer buy?"),
    )
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise choose_from("strategy", name, STRATEGIES)
    return STRATEGIES[name]


def transfer_strategy(train_backbone: bool, extend: bool) -> Strategy:
    """The one strategy that starts from the source weights, trains the backbone or not, and adds hidden layers
    (extension required) or not (extension forbidden): the cells of the classic transfer table."""
    (match,) = (
        s
        for s in STRATEGIES.values()
        if s.use_source_weights
        and s.train_backbone == train_backbone
        and s.extension == ("required" if extend else "forbidden")
    )
    return match


def help_text() -> str:
    """One line per strategy: its name and when to use it (the strategy list of `tlcli train --help`)."""
    width = max(len(name) for name in STRATEGIES)
    return "\n".join(f"  {s.name:<{width}}  {s.when}" for s in STRATEGIES.values())


def check_extension(strategy: Strategy, hidden_dims: list[int]) -> None:
    """Refuse configs whose extension contradicts the strategy's name."""
    if strategy.extension == "required" and not hidden_dims:
        raise TlcliError(
            f"strategy={strategy.name} needs new hidden layers, but strategy.extension.hidden_dims is empty; "
            f"set e.g. strategy.extension.hidden_dims=[256]"
        )
    if strategy.extension == "forbidden" and hidden_dims:
        extended = transfer_strategy(strategy.train_backbone, extend=True).name
        raise TlcliError(
            f"strategy={strategy.name} adds no hidden layers, but strategy.extension.hidden_dims="
            f"{list(hidden_dims)}; use strategy={extended} instead"
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

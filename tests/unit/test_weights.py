"""Source weights from real files: safetensors, .pth, tlcli runs, Lightning .ckpt; unsafe files refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tl_cli.errors import TlcliError
from tl_cli.weights import create_backbone, read_source_state_dict


def source_model(name: str = "test_resnet", in_chans: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, in_chans=in_chans)  # with its 1000-class classifier, like hub weights


def assert_backbone_equals(backbone: torch.nn.Module, source: torch.nn.Module) -> None:
    src = source.state_dict()
    got = backbone.state_dict()
    assert set(got) <= set(src)
    for key, value in got.items():
        assert torch.equal(value, src[key]), key


def test_local_safetensors(tmp_path: Path) -> None:
    src = source_model()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    backbone, where = create_backbone("test_resnet", str(tmp_path / "w.safetensors"))
    assert where == str(tmp_path / "w.safetensors")
    assert_backbone_equals(backbone, src)


def test_local_pth_state_dict(tmp_path: Path) -> None:
    src = source_model("test_vit")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    backbone, _ = create_backbone("test_vit", str(tmp_path / "w.pth"))
    assert_backbone_equals(backbone, src)


def test_grayscale_adapts_first_conv(tmp_path: Path) -> None:
    src = source_model()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    backbone, _ = create_backbone("test_resnet", str(tmp_path / "w.safetensors"), in_chans=1)
    expected = src.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True)  # timm's adapt_input_conv
    assert torch.allclose(backbone.state_dict()["conv1.0.weight"], expected)
    assert backbone(torch.randn(2, 1, 32, 32)).shape == (2, backbone.num_features)


def test_null_is_random_init() -> None:
    a, where = create_backbone("test_resnet", None)
    b, _ = create_backbone("test_resnet", None)
    assert where == "random init"
    assert not torch.equal(a.state_dict()["conv1.0.weight"], b.state_dict()["conv1.0.weight"])


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    save_file(source_model("test_vit").state_dict(), tmp_path / "vit.safetensors")
    with pytest.raises(TlcliError, match="do not fit backbone 'test_resnet'"):
        create_backbone("test_resnet", str(tmp_path / "vit.safetensors"))


def test_truncated_safetensors(tmp_path: Path) -> None:
    save_file(source_model().state_dict(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TlcliError, match="cannot read safetensors"):
        create_backbone("test_resnet", str(tmp_path / "cut.safetensors"))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)
    with pytest.raises(TlcliError, match="refusing to load"):
        create_backbone("test_resnet", str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_unknown_backbone_suggests_a_name() -> None:
    with pytest.raises(TlcliError, match="did you mean 'resnet18'"):
        create_backbone("resnet19", None)


def test_hub_offline_without_cache_fails_fast(monkeypatch, tmp_path: Path) -> None:
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(TlcliError, match="model.weights=/path/to/weights.safetensors"):
        create_backbone("test_resnet", "hub")
    assert time.perf_counter() - start < 30


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path: Path) -> None:
    """Not offline by flag, but the endpoint does not answer: a clear error within seconds, no hang."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens here
    with pytest.raises(TlcliError, match="cannot be reached"):
        create_backbone("test_resnet", "hub")


def test_lightning_ckpt_backbone_part(tmp_path: Path) -> None:
    src = source_model()
    state = {f"net.backbone.{k}": v for k, v in src.state_dict().items()}
    state["net.head.weight"] = torch.zeros(3, 96)
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": "test_resnet"}}, tmp_path / "x.ckpt")
    sd, name = read_source_state_dict(tmp_path / "x.ckpt")
    assert name == "test_resnet" and "head.weight" not in sd and "fc.weight" in sd
    with pytest.raises(TlcliError, match="'test_resnet' backbone, not 'test_vit'"):
        create_backbone("test_vit", str(tmp_path / "x.ckpt"))

"""Source weights from real files: safetensors, .pth, tlcli runs, Lightning .ckpt; unsafe files refused.

Sources are timm models' own state dicts (with their classifier), loaded through timm's load_pretrained."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tl_cli.errors import TlcliError
from tl_cli.rundir import BEST, LAST, MODEL
from tl_cli.transfer.weights import (
    check_runs_at,
    create_backbone,
    load_state_strict,
    read_source_state_dict,
    resolve_weights_path,
)


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


def save_source(tmp_path: Path, name: str, **kwargs) -> tuple[torch.nn.Module, str]:
    """A random-init timm model's own state dict (classifier included) as a safetensors file."""
    src = source_model(name, **kwargs)
    path = tmp_path / f"{name}.safetensors"
    save_file(src.state_dict(), path)
    return src, str(path)


def test_mlp_head_of_the_source_is_dropped(tmp_path: Path) -> None:
    """caformer's classifier is head.fc.fc2 inside an MLP head: the head's other tensors are not the backbone."""
    src, path = save_source(tmp_path, "caformer_s18")
    backbone, _ = create_backbone("caformer_s18", path, in_chans=3)
    assert not any(k.startswith("head.fc.") for k in backbone.state_dict())
    assert_backbone_equals(backbone, src)


def test_position_embeddings_resampled_to_another_size(tmp_path: Path) -> None:
    from timm.layers import resample_abs_pos_embed

    src, path = save_source(tmp_path, "test_vit")  # defined at 160 px: 10x10 patches
    backbone, _ = create_backbone("test_vit", path, img_size=64)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(backbone.pos_embed, expected)
    got, want = backbone.state_dict(), src.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in got.items() if k != "pos_embed")
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.num_features)


def test_position_table_left_by_the_filter_is_resampled(tmp_path: Path) -> None:
    """timm's PiT filter keeps pos_embed at the source's grid: tlcli resamples it with timm's interpolation."""
    src, path = save_source(tmp_path, "pit_ti_224")
    backbone, _ = create_backbone("pit_ti_224", path, img_size=64)
    expected = torch.nn.functional.interpolate(src.pos_embed.detach(), size=(7, 7), mode="bicubic")
    assert torch.allclose(backbone.pos_embed, expected)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.num_features)


def test_fixed_size_model_names_its_size(tmp_path: Path) -> None:
    _, path = save_source(tmp_path, "levit_128s")  # attention biases are per position: no resampling
    with pytest.raises(TlcliError, match=r"^levit_128s runs only at 224 px; set model.img_size=224$"):
        create_backbone("levit_128s", path, img_size=64)


def test_too_small_input_names_the_minimum(tmp_path: Path) -> None:
    _, path = save_source(tmp_path, "test_convnext")
    with pytest.raises(TlcliError, match=r"^test_convnext needs inputs of at least 32 px; set model.img_size=32$"):
        create_backbone("test_convnext", path, img_size=16)
    with pytest.raises(TlcliError, match="at least 32 px"):
        create_backbone("test_convnext", None, img_size=16)
    backbone, _ = create_backbone("test_convnext", path, img_size=32)
    assert backbone(torch.randn(1, 3, 32, 32)).shape == (1, backbone.num_features)


def test_dry_forward_keeps_mode_weights_and_bn_stats() -> None:
    for name, size in (("test_resnet", 64), ("test_convnext", 16)):  # BatchNorm that runs; a size search
        model = source_model(name).train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            check_runs_at(model, name, size, 3)
        except TlcliError:
            assert name == "test_convnext"
        assert model.training
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    check_runs_at(model.eval(), "test_convnext", 64, 3)
    assert not model.training


def test_one_channel_source(tmp_path: Path) -> None:
    """A source trained on grayscale (a tlcli run with in_chans=1) loads as is, or adapted to 3 channels."""
    src, path = save_source(tmp_path, "test_resnet", in_chans=1)
    gray, _ = create_backbone("test_resnet", path, in_chans=1)
    assert_backbone_equals(gray, src)
    rgb, _ = create_backbone("test_resnet", path, in_chans=3)
    assert rgb.state_dict()["conv1.0.weight"].shape[1] == 3
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, rgb.num_features)


def test_missing_backbone_tensor(tmp_path: Path) -> None:
    state = source_model().state_dict()
    del state["layer1.0.conv1.weight"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(TlcliError, match=r"1 missing keys \(e.g. layer1.0.conv1.weight\)"):
        create_backbone("test_resnet", str(tmp_path / "w.safetensors"))


def test_unexpected_tensor_outside_the_head(tmp_path: Path) -> None:
    state = source_model().state_dict()
    state["extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(TlcliError, match=r"1 unexpected keys \(e.g. extra.weight\)"):
        create_backbone("test_resnet", str(tmp_path / "w.safetensors"))


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    state = source_model().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(TlcliError, match=r"1 shape mismatches \(e.g. layer1.0.conv1.weight: \(3, 3, 3, 3\) vs model"):
        create_backbone("test_resnet", str(tmp_path / "w.safetensors"), img_size=64)


def test_img_size_reaches_timm_only_for_fixed_size_models() -> None:
    resnet, _ = create_backbone("test_resnet", None, img_size=48)  # timm's ResNet takes no img_size
    assert resnet(torch.randn(1, 3, 96, 96)).shape == (1, resnet.num_features)
    vit, _ = create_backbone("test_vit", None, img_size=48)
    assert vit.patch_embed.grid_size == (3, 3)


def test_run_dir_resolves_like_rundir(tmp_path: Path) -> None:
    (tmp_path / LAST).parent.mkdir()
    (tmp_path / LAST).write_bytes(b"")
    assert resolve_weights_path(str(tmp_path)) == tmp_path / LAST
    (tmp_path / BEST).write_bytes(b"")
    assert resolve_weights_path(str(tmp_path)) == tmp_path / BEST
    (tmp_path / MODEL).write_bytes(b"")
    assert resolve_weights_path(str(tmp_path)) == tmp_path / MODEL


def test_load_state_strict_reports_all_kinds() -> None:
    net = torch.nn.Linear(2, 3)
    with pytest.raises(TlcliError, match=r"^w: 1 shape mismatches .*; 1 missing keys \(e.g. bias\); 1 unexpected"):
        load_state_strict(net, {"weight": torch.zeros(3, 3), "other": torch.zeros(1)}, "w")
    load_state_strict(net, {"weight": torch.ones(3, 2), "bias": torch.ones(3)}, "w")
    assert torch.equal(net.weight, torch.ones(3, 2))

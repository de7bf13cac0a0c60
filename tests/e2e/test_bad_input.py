"""The bad-input catalogue (beyond tests/e2e/test_cli_usage.py): each case is one line on stderr naming the bad
value and the fix, a non-zero exit, no traceback, and nothing already in the output folder is touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import SMOKE, assert_one_line_error, run_dir_of, summary_of, write_images, write_unreadable

ONE_EPOCH = [*SMOKE, "trainer.max_epochs=1"]


def folder_case(tmp: Path, case: str) -> Path:
    root = tmp / case
    if case == "empty_root":
        root.mkdir()
    elif case == "empty_class":
        write_images(root / "train", {"a": 4, "b": 4})
        (root / "train" / "c").mkdir()
    elif case == "one_class":
        write_images(root / "train", {"a": 6})
    elif case == "val_has_other_classes":
        write_images(root / "train", {"a": 4, "b": 4})
        write_images(root / "val", {"a": 2, "zebra": 2})
    elif case == "all_images_bad":
        for cls in ("a", "b"):
            (root / "train" / cls).mkdir(parents=True)
            (root / "train" / cls / "x.png").write_bytes(b"not an image")
    elif case == "class_images_bad":
        write_images(root / "train", {"a": 4})
        write_unreadable(root / "train" / "b")
    return root


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("empty_root", ["no images found under"]),
        ("empty_class", ["class folder", "/c' has no images"]),
        ("one_class", ["1 class folder(s); need at least 2"]),
        ("val_has_other_classes", ["class 'zebra'", "same class folders"]),
        ("all_images_bad", ["can be read"]),
        ("class_images_bad", ["none of the 2 image files of class 'b'", "can be read"]),
    ],
)
def test_bad_image_folders(tlcli, tmp_path: Path, case: str, needles: list[str]) -> None:
    root = folder_case(tmp_path, case)
    result = tlcli("train", *ONE_EPOCH, "data=image_folder", f"data.root={root}", "data.num_workers=0")
    assert_one_line_error(result, *needles)


def test_bad_image_files_are_skipped_and_counted(tlcli, tmp_path: Path) -> None:
    # found when loaded, not up front: they stay in the split sizes, each replaced by the next readable image
    root = tmp_path / "pets"
    write_images(root / "train", {"cat": 10, "dog": 10})
    (root / "train" / "cat" / "zero.png").write_bytes(b"")
    (root / "train" / "dog" / "text.jpg").write_text("hello")
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    result = tlcli("train", *ONE_EPOCH, "data=image_folder", f"data.root={root}", "data.num_workers=0")
    summary = summary_of(run_dir_of(result))
    assert (result.stdout + result.stderr).count("skipped 3 unreadable image file(s)") == 1
    assert summary["unreadable_files"] == 3 and sum(summary["split_sizes"].values()) == 23


def test_undecodable_files_are_counted_across_workers(tlcli, tmp_path: Path) -> None:
    # a truncated JPEG passes PIL's verify() and fails only when decoded; DataLoader workers find it
    root = tmp_path / "pets"
    write_images(root, {"cat": 6, "dog": 6})
    garbage, _ = write_unreadable(root / "dog")
    result = tlcli("train", *ONE_EPOCH, "data=image_folder", f"data.root={root}", "data.num_workers=2")
    summary = summary_of(run_dir_of(result))
    output = result.stdout + result.stderr
    assert output.count("unreadable image file") == 1 and f"(e.g. {garbage})" in output
    assert summary["unreadable_files"] == 2


@pytest.mark.parametrize("kind", ["other_arch", "shape_mismatch", "truncated", "other_tool", "pickle"])
def test_bad_weights_files(tlcli, tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("w.pth" if kind in ("other_tool", "pickle") else "w.safetensors")
    if kind == "other_arch":
        save_file(timm.create_model("test_vit").state_dict(), path)
        needles = ["do not fit backbone 'test_resnet'"]
    elif kind == "shape_mismatch":
        state = timm.create_model("test_resnet").state_dict()
        state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
        save_file(state, path)
        needles = ["shape mismatches", "layer1.0.conv1.weight"]
    elif kind == "truncated":
        save_file(timm.create_model("test_resnet").state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
        needles = ["cannot read safetensors"]
    elif kind == "other_tool":
        torch.save({"epoch": 3, "optimizer": "sgd", "notes": ["trained elsewhere"]}, path)
        needles = ["not a state dict of tensors"]
    else:
        import pickle

        path.write_bytes(pickle.dumps({"state_dict": Path("/tmp")}))  # an object weights_only refuses
        needles = ["refusing to load"]
    result = tlcli("train", *ONE_EPOCH, "strategy=freeze", f"model.weights={path}")
    assert_one_line_error(result, str(path), *needles)


def test_unwritable_output_folder(tlcli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = tlcli("train", *ONE_EPOCH, env={"TLCLI_OUTPUT_DIR": str(blocker / "outputs")})
    assert_one_line_error(result, str(blocker), "writable")
    assert blocker.read_text() == "a file where a folder should be"


def test_nan_loss_stops_with_epoch_and_step(tlcli, tmp_path: Path) -> None:
    # checked in-epoch only at batch 0 here, and checkpoints saved when validation ends: the check before
    # validation must catch it
    overrides = ["optim.lr=1e30", "optim.name=sgd", "trainer.precision=32-true", "trainer.log_every_n_steps=1000"]
    overrides.append("+callbacks.model_checkpoint.save_on_train_epoch_end=false")
    result = tlcli("train", *ONE_EPOCH, "strategy=scratch", *overrides)
    assert_one_line_error(result, "training loss became", "epoch 0, step", "lower optim.lr")
    # stopped before validation could checkpoint the nan weights
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_a_failed_run_leaves_earlier_runs_untouched(tlcli, tmp_path: Path) -> None:
    first = run_dir_of(tlcli("train", *ONE_EPOCH))
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.rglob("*") if p.is_file()}
    assert_one_line_error(tlcli("train", *ONE_EPOCH, "data=image_folder", "data.root=/nonexistent"), "/nonexistent")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.rglob("*") if p.is_file()} == digest

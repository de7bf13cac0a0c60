"""The data sources on real files written here: folders of every PIL format, CSV lists, Hugging Face datasets
(save_to_disk and parquet), WebDataset tar shards. No mocks: each test reads what it wrote."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    FORMATS,
    datamodule,
    encoded,
    hf_tables,
    pixels,
    shard_samples,
    write_csv,
    write_mixed,
    write_shards,
)
from tl_cli.data.images import IMAGE_EXTENSIONS
from tl_cli.errors import TlcliError


def sizes(dm) -> dict[str, int]:
    return {split: len(d) for split, d in dm.splits.items()}


def test_folder_reads_every_pil_format_and_reports_other_files(tmp_path: Path, caplog) -> None:
    write_mixed(tmp_path / "train", per_class=6)
    write_mixed(tmp_path / "test", per_class=2)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"hidden")
    with caplog.at_level(logging.WARNING):
        dm = datamodule(["data=image_folder", f"data.root={tmp_path}"], in_chans=3)
    assert sum(sizes(dm).values()) == 16  # 12 train (val held out of them) + 4 test: every format used
    suffixes = {Path(p).suffix for p, _ in dm.splits["train"].base.samples}
    assert suffixes == set(FORMATS.values())
    warned = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert len(warned) == 1 and "ignored 1 file(s)" in warned[0] and "notes.txt" in warned[0]
    assert {s: dm.splits[s][0][0].shape for s in ("train", "test")} == {"train": (3, 32, 32), "test": (3, 32, 32)}
    assert set(IMAGE_EXTENSIONS) >= {s.lower() for s in FORMATS.values()}


def test_folder_with_loose_images_says_the_layout(tmp_path: Path) -> None:
    Image.fromarray(pixels(0, 0)).save(tmp_path / "a.png")
    Image.fromarray(pixels(1, 0)).save(tmp_path / "b.webp")
    with pytest.raises(TlcliError, match=r"2 image file\(s\) outside class folders \(a.png, b.webp\).*<class>/<image>"):
        datamodule(["data=image_folder", f"data.root={tmp_path}"])


def test_csv_paths_labels_and_held_out_splits(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rows = write_mixed(images, per_class=10)
    # integer labels, renamed columns, a relative path and an absolute one
    coded = [(p if i % 2 else str(images / p), str(int(c == "dog"))) for i, (p, c) in enumerate(rows)]
    table = write_csv(tmp_path / "all.csv", coded, ("file", "y"))
    keys = ["data=csv", f"data.root={images}", f"data.train={table}", "data.path_column=file", "data.label_column=y"]
    dm = datamodule(keys)
    assert dm.classes == ["0", "1"] and sizes(dm) == {"train": 14, "test": 4, "val": 2}
    assert set(dm.notes) == {"val", "test"}
    assert sorted(np.bincount(dm.train_labels).tolist()) == [7, 7]
    few = datamodule([*keys, "data.samples_per_class=3"])
    assert np.bincount(few.train_labels).tolist() == [3, 3]


def test_csv_bad_input_is_one_error_each(tmp_path: Path) -> None:
    rows = write_mixed(tmp_path, per_class=3)
    train = write_csv(tmp_path / "train.csv", rows)
    base = ["data=csv", f"data.train={train}"]
    cases = {
        "no column 'label'": write_csv(tmp_path / "cols.csv", rows, ("path", "class")),
        r"1 label\(s\) that train does not have \(bird\)": write_csv(tmp_path / "bird.csv", [(rows[0][0], "bird")]),
        "lists no images": write_csv(tmp_path / "empty.csv", []),
        r"2 of 3 listed files do not exist \(.*gone1.png, .*gone2.png\)": write_csv(
            tmp_path / "gone.csv", [(rows[0][0], "cat"), ("gone1.png", "cat"), ("gone2.png", "dog")]
        ),
    }
    for message, table in cases.items():
        key = "data.train" if "column" in message else "data.test"
        with pytest.raises(TlcliError, match=message):
            datamodule([*base, f"{key}={table}"])


def test_hf_save_to_disk_and_parquet(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # parquet is converted into this cache
    tables = hf_tables(tmp_path, image_column="img", label_column="fine_label")  # found by feature type
    tables.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "parquet").mkdir()
    for split, table in tables.items():
        table.to_parquet(str(tmp_path / "parquet" / f"{split}-00000-of-00001.parquet"))
    for folder in ("disk", "parquet"):
        dm = datamodule(["data=hf", f"data.dataset={tmp_path / folder}"], in_chans=3)
        assert dm.classes == ["cat", "dog"] and sizes(dm) == {"train": 18, "test": 6, "val": 2}, folder
        assert dm.notes.keys() == {"val"}
        image, label = dm.splits["test"][5]
        assert image.shape == (3, 32, 32) and label == 1
    with pytest.raises(TlcliError, match="data.image_column=picture is not a column"):
        datamodule(["data=hf", f"data.dataset={tmp_path / 'disk'}", "data.image_column=picture"])


def test_webdataset_counts_streams_and_holds_out(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    train = write_shards(tmp_path, "train", shard_samples(12), per_shard=8)
    test = write_shards(tmp_path, "test", shard_samples(3, offset=100), per_shard=8)
    keys = [
        "data=webdataset",
        f"data.train='{train}'",
        f"data.test='{test}'",
        "data.num_workers=0",
        "data.val_fraction=0.3",
        "data.augment=false",  # the same pixels every epoch: only the order may change
    ]
    dm = datamodule(keys)
    assert dm.classes == ["0", "1"] and sizes(dm)["test"] == 6
    assert sizes(dm)["train"] + sizes(dm)["val"] == 24 and sizes(dm)["val"] > 0  # held out by key hash
    served = {split: [int(y) for _, y in dm.dataset(split)] for split in ("train", "val", "test")}
    assert {s: len(y) for s, y in served.items()} == sizes(dm)  # the counts are what the stream serves
    assert np.bincount(served["train"]).tolist() == np.bincount(dm.train_labels).tolist()
    loader = dm.train_dataloader()

    def epoch(batches) -> list[tuple[int, int]]:
        return [(int(x.sum()), int(y)) for xs, ys in batches for x, y in zip(xs, ys, strict=True)]

    first, second = epoch(loader), epoch(loader)
    assert sorted(y for _, y in first) == sorted(served["train"])  # one pass over train
    assert sorted(first) == sorted(second) and first != second  # the same samples, reshuffled each epoch
    assert epoch(datamodule(keys).train_dataloader()) == first  # seeded: a new run repeats the order
    assert len(dm.balanced_class_weights()) == 2
    named = datamodule([*keys, "data.class_names=[cat,dog]", "data.split_sizes={train: 20, val: 4, test: 6}"])
    assert named.classes == ["cat", "dog"] and sizes(named) == {"train": 20, "val": 4, "test": 6}  # not counted


def test_webdataset_bad_shards_are_one_error_each(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    good = write_shards(tmp_path, "good", shard_samples(4), per_shard=8)
    no_cls = write_shards(tmp_path, "nocls", [("k1", {"png": encoded(0, 0)}), *shard_samples(2)], per_shard=8)
    corrupt = write_shards(tmp_path, "bad", [("k9", {"jpg": b"not a jpeg", "cls": b"1"}), *shard_samples(2)], 8)
    base = ["data=webdataset", f"data.train='{good}'", "data.num_workers=0", "data.val_fraction=0.5"]
    with pytest.raises(TlcliError, match="sample 'k1' of shard .*nocls-000000.tar lacks a .cls label"):
        datamodule([*base, f"data.test='{no_cls}'"])
    no_image = write_shards(tmp_path, "noimage", [("k0", {"cls": b"0"}), *shard_samples(2)], per_shard=8)
    with pytest.raises(TlcliError, match="sample 'k0' .* lacks a .png/.jpg/"):
        datamodule([*base, f"data.test='{no_image}'"])
    with pytest.raises(TlcliError, match=r"label\(s\) that train does not have \(7\)"):
        datamodule([*base, f"data.test='{write_shards(tmp_path, 'seven', shard_samples(1, cls=lambda c: '7'), 8)}'"])
    dm = datamodule([*base, f"data.test='{corrupt}'"])
    with pytest.raises(TlcliError, match="sample 'k9' .* its .jpg cannot be decoded"):
        list(dm.dataset("test"))
    with pytest.raises(TlcliError, match="samples_per_class"):
        datamodule([*base, "data.samples_per_class=2"])


def test_ddp_needs_a_train_shard_per_rank_and_rank_errors_stay_one_line(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    from torch.multiprocessing.spawn import ProcessRaisedException

    from tests.conftest import compose
    from tl_cli.config.checks import check_config
    from tl_cli.errors import describe

    one = write_shards(tmp_path, "one", shard_samples(2), per_shard=8)
    cfg = compose(["experiment=smoke", "data=webdataset", f"data.train='{one}'", "trainer=ddp"])
    with pytest.raises(TlcliError, match=r"has 1 shard\(s\) for 2 ranks"):
        check_config(cfg)
    # what the parent of a ddp_spawn rank receives: the rank's traceback as text
    raised = ProcessRaisedException(
        '\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n  File "x.py"\n'
        "tl_cli.data.stream.BadSample: sample 'k9' of shard a.tar: its .jpg cannot be decoded",
        1,
        123,
    )
    assert describe(raised) == ("sample 'k9' of shard a.tar: its .jpg cannot be decoded", 2)

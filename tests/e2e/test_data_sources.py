"""`tlcli train` and `tlcli eval` from each data source, as real subprocess runs on files written here: one run per
source, and the bad input that only a whole run can show (errors raised in DataLoader workers, offline Hub misses,
a user's factory)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import (
    SMOKE,
    assert_one_line_error,
    hf_tables,
    run_dir_of,
    shard_samples,
    summary_of,
    write_csv,
    write_mixed,
    write_shards,
)

TRAIN_SHORT = ["train", *SMOKE, "trainer.max_epochs=1", "trainer.precision=32-true"]


def eval_report(tlcli, run: Path, *args: str) -> dict:
    result = tlcli("eval", f"ckpt={run}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run / "eval" / "metrics.json").read_text())


def test_csv_trains_and_evaluates_on_every_listed_image(tlcli, tmp_path: Path) -> None:
    rows = write_mixed(tmp_path / "images", per_class=8)
    train = write_csv(tmp_path / "train.csv", rows[:6] + rows[8:14])
    test = write_csv(tmp_path / "test.csv", rows[6:8] + rows[14:])
    run = run_dir_of(
        tlcli(*TRAIN_SHORT, "data=csv", f"data.root={tmp_path / 'images'}", f"data.train={train}", f"data.test={test}")
    )
    summary = summary_of(run)
    assert sum(summary["split_sizes"].values()) == 16 and summary["split_sizes"]["test"] == 4
    assert set(summary["split_notes"]) == {"val"}
    assert eval_report(tlcli, run)["num_images"] == 4  # eval reads the same files


def test_hf_dataset_trains_and_a_hub_miss_is_one_line(tlcli, tmp_path: Path) -> None:
    hf_tables(tmp_path).save_to_disk(str(tmp_path / "saved"))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = run_dir_of(tlcli(*TRAIN_SHORT, "data=hf", f"data.dataset={tmp_path / 'saved'}", env=env))
    summary = summary_of(run)
    assert summary["split_sizes"] == {"train": 18, "test": 6, "val": 2} and set(summary["split_notes"]) == {"val"}
    assert json.loads((run / "labels.json").read_text()) == ["cat", "dog"]  # from the ClassLabel
    missed = tlcli(*TRAIN_SHORT, "data=hf", "data.dataset=someone/not-cached", env=env)
    assert_one_line_error(missed, "data.dataset=someone/not-cached could not be loaded", "local Hugging Face cache")


def test_webdataset_streams_through_workers_and_evaluates(tlcli, tmp_path: Path) -> None:
    train = write_shards(tmp_path, "train", shard_samples(10), per_shard=5)
    test = write_shards(tmp_path, "test", shard_samples(3, offset=100), per_shard=5)
    keys = ["data=webdataset", f"data.train='{train}'", f"data.test='{test}'", "data.val_fraction=0.3"]
    run = run_dir_of(tlcli(*TRAIN_SHORT, *keys, "data.num_workers=2"))  # each worker reads its own shards
    sizes = summary_of(run)["split_sizes"]
    assert sizes["train"] + sizes["val"] == 20 and sizes["test"] == 6 and sizes["val"] > 0
    assert eval_report(tlcli, run)["num_images"] == 6  # with the run's data.num_workers=2
    corrupt = write_shards(tmp_path, "bad", [("k9", {"jpg": b"not a jpeg", "cls": b"1"}), *shard_samples(2)], 8)
    bad = tlcli(*TRAIN_SHORT, *keys[:3], f"data.val='{corrupt}'", "data.num_workers=1")  # fails in the sanity check
    assert_one_line_error(bad, "sample 'k9'", "its .jpg cannot be decoded")  # raised in a DataLoader worker
    refused = tlcli(*TRAIN_SHORT, *keys, "data.samples_per_class=2")
    assert_one_line_error(refused, "data=webdataset: data.samples_per_class", "not a stream")
    unquoted = tlcli(*TRAIN_SHORT, "data=webdataset", f"data.train={train}")
    assert_one_line_error(unquoted, "quote brace patterns")


FACTORY = """
import numpy as np
from tl_cli.data.datasets import ArrayImages, RawSplits


def make(cfg, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], 10)
    images = np.clip(rng.normal(40 + 80 * labels[:, None, None], 20, (30, 12, 12)), 0, 255).astype(np.uint8)
    splits = RawSplits(classes=["low", "mid", "high"])
    splits.add("train", ArrayImages(images, labels), labels)
    return splits
"""


def test_custom_factory_from_a_config_dir_or_the_working_directory(tlcli, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "my_source.py").write_text(FACTORY)
    custom = ["data=custom", "data.factory=my_source:make"]
    run = run_dir_of(tlcli("train", "--config-dir", "conf", *TRAIN_SHORT[1:], *custom))
    summary = summary_of(run)
    assert sum(summary["split_sizes"].values()) == 30 and set(summary["split_notes"]) == {"val", "test"}
    assert json.loads((run / "labels.json").read_text()) == ["low", "mid", "high"]
    (tmp_path / "here_source.py").write_text(FACTORY)  # the tlcli fixture runs in tmp_path: imported from there
    missing = tlcli(*TRAIN_SHORT, "data=custom", "data.factory=here_source:nothing")
    assert_one_line_error(missing, "data.factory=here_source:nothing", "has no function nothing")
    elsewhere = tlcli(*TRAIN_SHORT, "data=custom", "data.factory=my_source:make")  # no --config-dir: not found
    assert_one_line_error(elsewhere, "cannot import my_source", "--config-dir")

"""Frozen features computed once: same results as without the cache, keyed and invalidated on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_one_line_error, run_dir_of, summary_of
from tl_cli.data.features import cache_decision
from tl_cli.errors import TlcliError

# fp32: the cached and uncached paths extract in different batch sizes, which bf16 kernels may round differently
# slow: the cache against uncached training, trained twice (make test-all and CI run them)
pytestmark = pytest.mark.slow


FROZEN = [
    "experiment=smoke",
    "model=embedded",
    "strategy=extend_freeze",
    "data.augment=false",
    "trainer.precision=32-true",
]


def test_cache_gives_the_same_training(tlcli) -> None:
    plain = run_dir_of(tlcli("train", *FROZEN, "data.cache_features=false"))
    cached = run_dir_of(tlcli("train", *FROZEN, "data.cache_features=auto"))
    assert summary_of(plain)["feature_cache"] is False and summary_of(cached)["feature_cache"] is True
    a, b = summary_of(plain)["metrics"], summary_of(cached)["metrics"]
    assert abs(a["test/acc"] - b["test/acc"]) <= 0.005
    wa, wb = load_file(plain / "model.safetensors"), load_file(cached / "model.safetensors")
    for key in wa:  # same seed, same RNG stream: the trained layers agree to float tolerance
        assert torch.allclose(wa[key], wb[key], atol=1e-4), key


def test_disk_cache_is_reused_and_invalidated(tlcli, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = tlcli("train", *FROZEN, f"data.feature_cache_dir={cache}")
    run_dir_of(first)
    assert "feature cache written" in first.stdout + first.stderr
    entries = [p for p in cache.iterdir() if (p / "test.y.npy").is_file()]
    assert len(entries) == 1 and (entries[0] / "train.x.npy").is_file() and not list(entries[0].glob("*.tmp"))
    again = tlcli("train", *FROZEN, f"data.feature_cache_dir={cache}")
    assert summary_of(run_dir_of(again))["metrics"]["test/acc"] == summary_of(run_dir_of(first))["metrics"]["test/acc"]
    assert "feature cache hit" in again.stdout + again.stderr
    changed = tlcli("train", *FROZEN, f"data.feature_cache_dir={cache}", "data.crop_pct=0.875")  # new transform
    run_dir_of(changed)
    assert len([p for p in cache.iterdir() if (p / "test.y.npy").is_file()]) == 2


def test_auto_stays_off_with_augmentation_and_says_why(tlcli) -> None:
    result = tlcli(
        "train", "experiment=smoke", "model=embedded", "strategy=freeze", "data.augment=true", "trainer.max_epochs=1"
    )
    assert summary_of(run_dir_of(result))["feature_cache"] is False
    assert "train augmentation is on" in result.stdout + result.stderr


def test_forcing_the_cache_where_it_is_unsafe_is_an_error(tlcli) -> None:
    result = tlcli("train", "experiment=smoke", "strategy=finetune", "data.cache_features=true")
    assert_one_line_error(result, "data.cache_features=true", "strategy=freeze")


def test_decision_rule() -> None:
    assert cache_decision("auto", train_backbone=False, augment=False)[0]
    assert not cache_decision("auto", train_backbone=True, augment=False)[0]
    assert not cache_decision("auto", train_backbone=False, augment=True)[0]
    assert not cache_decision("false", train_backbone=False, augment=False)[0]
    with pytest.raises(TlcliError, match="augment=false"):
        cache_decision("true", train_backbone=False, augment=True)
    with pytest.raises(TlcliError, match="not one of"):
        cache_decision("sometimes", train_backbone=False, augment=False)

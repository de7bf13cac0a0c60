"""The documented fast-defaults rule (tl_cli/transfer/speed.py)."""

from __future__ import annotations

import pytest

from tl_cli.errors import TlcliError
from tl_cli.transfer import speed


def test_explicit_settings_win() -> None:
    assert speed.resolve("32-true", "auto", "cpu") == ("32-true", False, "set in config")
    assert speed.resolve("bf16-mixed", "auto", "cpu")[:2] == ("bf16-mixed", True)
    assert speed.resolve("bf16-mixed", "false", "cpu")[:2] == ("bf16-mixed", False)


def test_auto_follows_the_hardware(monkeypatch) -> None:
    monkeypatch.delenv("TLCLI_PRECISION", raising=False)  # pytest --precision sets it for the session
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.resolve("auto", "auto", "cpu")[:2] == ("bf16-mixed", True)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    precision, channels_last, reason = speed.resolve("auto", "auto", "cpu")
    assert (precision, channels_last) == ("32-true", False) and "without native bf16" in reason


def test_workers_auto_is_sized_for_the_device(monkeypatch) -> None:
    assert speed.resolve_workers("3", "cpu") == 3
    assert speed.resolve_workers(0, "gpu") == 0
    assert speed.resolve_workers("auto", "cpu") == 0  # the model's compute already uses every core
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert speed.resolve_workers("auto", "gpu") == 8  # capped
    assert speed.resolve_workers("auto", "gpu", devices=4) == 3  # 16 cores / 4 GPUs, one left for the main process
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert speed.resolve_workers("auto", "gpu") == 1


def test_bad_worker_counts_are_refused() -> None:
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(TlcliError, match=f"data.num_workers={bad} is not valid"):
            speed.resolve_workers(bad)


def test_env_replaces_auto_only(monkeypatch) -> None:
    monkeypatch.setenv("TLCLI_PRECISION", "32-true")
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.resolve("auto", "auto", "cpu")[:2] == ("32-true", False)
    assert speed.resolve("bf16-mixed", "auto", "cpu")[:2] == ("bf16-mixed", True)

"""The documented fast-defaults rule (tl_cli/speed.py)."""

from __future__ import annotations

from tl_cli import speed


def test_explicit_settings_win() -> None:
    assert speed.resolve("32-true", "auto", "cpu") == ("32-true", False, "set in config")
    assert speed.resolve("bf16-mixed", "auto", "cpu")[:2] == ("bf16-mixed", True)
    assert speed.resolve("bf16-mixed", "false", "cpu")[:2] == ("bf16-mixed", False)


def test_auto_follows_the_hardware(monkeypatch) -> None:
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.resolve("auto", "auto", "cpu")[:2] == ("bf16-mixed", True)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    precision, channels_last, reason = speed.resolve("auto", "auto", "cpu")
    assert (precision, channels_last) == ("32-true", False) and "without native bf16" in reason

"""Layer-wise LR decay (issue 15) through real `tlcli` runs: bad values are one-line errors."""

from __future__ import annotations

import pytest

from tests.conftest import assert_one_line_error

SMOKE = ["experiment=smoke"]


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["optim.layer_decay=1.5"], ["optim.layer_decay=1.5", "(0, 1]"]),
        (["optim.layer_decay=0"], ["optim.layer_decay=0", "(0, 1]"]),
        (["strategy=freeze", "optim.layer_decay=0.75"], ["optim.layer_decay=0.75", "no effect with strategy=freeze"]),
    ],
)
def test_bad_values_are_one_line_errors(tlcli, overrides: list[str], needles: list[str]) -> None:
    assert_one_line_error(tlcli("train", *SMOKE, *overrides), *needles)

"""What `tlcli train` prints: a progress bar in a terminal; plain per-epoch lines in a log (CI, `| tee`, SLURM).

Lightning's bar and Hydra's job log both write to stdout, so stdout decides."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest

from tests.conftest import SMOKE, TLCLI, run_dir_of

# slow: log formatting (make test-all and CI run them)
pytestmark = pytest.mark.slow


EPOCH_LINE = re.compile(
    r"epoch (\d+)/2  train loss [\d.]+ acc [\d.]+  val loss [\d.]+ acc [\d.]+  \d+ img/s  lr [\d.e+-]+  [\d.]+ s$"
)


def test_log_output_is_plain_lines_once_each_without_adverts(tlcli) -> None:
    result = tlcli("train", *SMOKE)  # stdout and stderr are pipes here, as in CI
    run_dir_of(result)  # the last stdout line is still run_dir: <path>
    assert "test/acc: " in result.stdout.splitlines()[-2]
    output = result.stdout + result.stderr  # train logs through Hydra's job logging (stdout and train.log)
    assert "\r" not in output and "\x1b[" not in output, output[-2000:]
    epochs = [int(m.group(1)) for line in output.splitlines() if (m := EPOCH_LINE.search(line))]
    assert epochs == [1, 2], output[-3000:]
    assert "litlogger" not in output and "Tip:" not in output
    info = [line for line in output.splitlines() if "GPU available" in line]
    assert len(info) == 1, info  # Lightning's INFO lines once, through tlcli's log format only


def test_terminal_gets_the_progress_bar(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm draws nothing 0 columns wide
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal while the run writes to it (a full pty buffer would block it)
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {**os.environ, "TLCLI_OUTPUT_DIR": str(tmp_path / "outputs"), "COLUMNS": "120"}
    result = subprocess.run(
        [str(TLCLI), "train", *SMOKE], stdout=slave, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0, result.stderr[-3000:]
    assert terminal.strip().splitlines()[-1].startswith("run_dir: ")
    assert "\rEpoch 1: 100%" in terminal, terminal[:3000]  # tqdm redraws in place (Lightning counts epochs from 0)
    assert not EPOCH_LINE.search(terminal)

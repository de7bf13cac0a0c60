"""`tlcli report <multirun dir>`: report.md, report.csv and report.png (and the study view) of a sweep."""

from __future__ import annotations

from tl_cli.errors import TlcliError
from tl_cli.reporting.report import make_report

USAGE = "tlcli report <multirun dir>"


def main(args: list[str]) -> int:
    """Entry point of `tlcli report <dir>` (also `dir=<dir>`)."""
    if args and args[0] in ("-h", "--help"):
        print(f"usage: {USAGE}\n  writes report.md, report.csv and report.png into the multirun folder")
        return 0
    if not args:
        raise TlcliError(f"report needs the folder of a sweep; usage: {USAGE} (e.g. outputs/train/multiruns/<time>)")
    if len(args) != 1:
        raise TlcliError(f"report takes one folder, got {len(args)} arguments {args}; usage: {USAGE}")
    directory = args[0].removeprefix("dir=")
    path = make_report(directory)
    print(f"report: {path}", flush=True)
    return 0

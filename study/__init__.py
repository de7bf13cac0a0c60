"""The transfer study's tools (docs/study.md, `make study`): run with `python -m study.<module>` from the repo.
Not part of the tlcli package (not in the wheel); they drive `tlcli train` and read its run dirs and
`tl_cli.reporting` (the study view `tlcli report` shows)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from tl_cli.errors import TlcliError, report


def run_module(main: Callable[[list[str]], int], errors: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """`python -m study.<module>` entry points: exit with main(argv)'s code, or the one-line error of a
    TlcliError (or of one of `errors`)."""
    try:
        sys.exit(main(sys.argv[1:]))
    except (TlcliError, *errors) as ex:
        sys.exit(report(ex))

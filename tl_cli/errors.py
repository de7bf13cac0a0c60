"""User-facing errors: one line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable

EXIT_USAGE = 2  # bad input: config, data, weights
EXIT_FAILURE = 1  # anything unexpected

# Config groups and the noun a user thinks of them by.
_GROUP_NOUNS = {"data": "dataset", "strategy": "strategy", "model": "model", "trainer": "trainer"}


class TlcliError(Exception):
    """An error caused by the user's input; its message is the whole story (one line)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    match = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def choose_from(kind: str, value: object, choices: Iterable[str], limit: int = 12) -> TlcliError:
    """Error for a value that is not one of the valid choices (the first `limit` of them listed)."""
    choices = sorted(set(choices))
    listed = ", ".join(choices) if len(choices) <= limit else ", ".join(choices[:limit]) + ", ..."
    return TlcliError(f"unknown {kind} '{value}'{did_you_mean(str(value), choices)}; choose one of: {listed}")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _known_config_keys() -> list[str]:
    """Dotted keys of the train config schema, for 'did you mean' on typos."""
    from omegaconf import OmegaConf

    from tl_cli.config.schema import TrainConfig

    def walk(node: object, prefix: str) -> Iterable[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        yield prefix.rstrip(".")

    keys = list(walk(OmegaConf.to_container(OmegaConf.structured(TrainConfig)), ""))
    return [k for k in keys if k]


def _known_keys_like(key: str) -> list[str]:
    """The valid keys a typo of `key` may have meant: trainer.* keys are lightning.Trainer's arguments (the
    schema leaves the trainer group open), the others the train schema's."""
    if key.startswith("trainer."):
        from tl_cli.config.keys import trainer_arguments

        return [f"trainer.{name}" for name in trainer_arguments()]
    return _known_config_keys()


def describe(ex: BaseException) -> tuple[str, int]:
    """Turn any exception into (one-line message, exit code)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from tl_cli.extras import missing_extra

    if isinstance(ex, TlcliError):
        return one_line(str(ex)), getattr(ex, "exit_code", EXIT_USAGE)
    extra = missing_extra(ex)  # a feature whose pip extra is not installed (tl_cli/extras.py)
    if extra:
        return one_line(extra), EXIT_USAGE
    if isinstance(ex, MissingConfigException):
        missing = ex.missing_cfg_file or ""
        if "/" in missing and ex.options:
            group, value = missing.rsplit("/", 1)
            noun = _GROUP_NOUNS.get(group, f"{group} config")
            return one_line(str(choose_from(noun, value, ex.options))), EXIT_USAGE
        return one_line(str(ex).split("\n")[0]), EXIT_USAGE
    if isinstance(ex, OverrideParseException):
        first = str(ex).splitlines()[0]
        # Hydra reads {a..b} as a dict: a brace pattern (data=webdataset shards) must be quoted
        hint = "; quote brace patterns: \"data.train='shards/train-{000000..000009}.tar'\"" if "'{'" in first else ""
        return one_line(f"cannot parse override: {first}{hint}"), EXIT_USAGE
    cause = ex.__cause__ if isinstance(ex, ConfigCompositionException) else ex
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        found = re.search(r"override '([^']+)'", str(ex)) or re.search(r"full_key: (\S+)", str(cause))
        key = found.group(1) if found else "?"
        known = _known_keys_like(key)
        if key in known:  # a real Trainer argument the trainer config does not list: it needs '+'
            return f"'{key}' is not in the config yet; add it with '+{key}=<value>'", EXIT_USAGE
        hint = did_you_mean(key, known)
        if key.startswith("trainer."):  # any lightning.Trainer argument, added with '+'
            advice = "trainer.* keys are lightning.Trainer's arguments: add another with '+trainer.<argument>=<value>'"
        else:
            advice = f"add a new key with '+{key}=<value>' or list the valid keys with '--cfg job'"
        return f"unknown config key '{key}'{hint}; {advice}", EXIT_USAGE
    if isinstance(cause, ValidationError):
        key = getattr(cause, "full_key", "") or "?"
        first = str(cause).splitlines()[0]
        return one_line(f"invalid value for '{key}': {first}"), EXIT_USAGE
    if isinstance(cause, OmegaConfBaseException) or isinstance(ex, ConfigCompositionException):
        return one_line(f"config error: {str(ex).splitlines()[0]} {str(cause).splitlines()[0]}"), EXIT_USAGE
    if isinstance(ex, OSError) and ex.filename:
        return (
            one_line(
                f"cannot write or read '{ex.filename}': {ex.strerror}; for outputs set TLCLI_OUTPUT_DIR "
                f"or hydra.run.dir to a writable folder"
            ),
            EXIT_USAGE,
        )
    own = _spawned_tlcli_error(ex)
    if own:
        return one_line(own), EXIT_USAGE
    first = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
    return (
        one_line(f"{type(ex).__name__}: {first} (rerun with TLCLI_DEBUG=1 for the full traceback)"),
        EXIT_FAILURE,
    )


def _spawned_tlcli_error(ex: BaseException) -> str | None:
    """The message of a TlcliError raised in a process torch.multiprocessing spawned (a ddp_spawn rank): the
    parent gets only the child's traceback as text, whose last line is '<module>.<Error>: <message>'."""
    if type(ex).__name__ != "ProcessRaisedException":
        return None
    last = str(ex).strip().splitlines()[-1] if str(ex).strip() else ""
    found = re.match(r"tl_cli\.[\w.]*\.(?:TlcliError|UnreadableSplit|BadSample|MissingExtra): (.+)", last)
    return found.group(1) if found else None


def report(ex: BaseException) -> int:
    """Print the one-line error and return the exit code; re-raise when TLCLI_DEBUG is set."""
    if os.environ.get("TLCLI_DEBUG"):
        raise ex
    message, code = describe(ex)
    sys.stdout.flush()
    print(f"tlcli: error: {message}", file=sys.stderr, flush=True)
    return code

"""`tlcli <command> [hydra overrides]`: one Hydra app per command.

Kept light: torch, timm and Lightning are imported only inside the task function, so
`tlcli --help` and `tlcli train --cfg job` never load them.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

from tl_cli import __version__
from tl_cli.errors import EXIT_USAGE, TlcliError, choose_from, describe, report

COMMANDS: dict[str, str] = {
    "train": "fit a transfer strategy on a timm backbone, test it, write a run directory",
    "eval": "metrics of a trained run on any split or dataset: metrics.json + confusion matrix",
    "predict": "classify image files with a trained run: predictions CSV with top-k",
    "export": "write a trained run as a standalone onnx / torchscript / safetensors model",
    "report": "compare the runs of a sweep: report.md table, report.csv, report.png plots",
    "lr-find": "Lightning's LR range test on train's config: suggested optim.lr, lr_find.png",
    "explain": "Grad-CAM heat maps of a trained run: one overlay PNG per image",
}

# The module whose `main(cfg)` runs each command; imported only when the command runs.
_MODULES: dict[str, str] = {
    "train": "tl_cli.commands.train",
    "eval": "tl_cli.commands.evaluate",
    "predict": "tl_cli.commands.predict",
    "export": "tl_cli.commands.export",
    "report": "tl_cli.commands.report",
    "lr-find": "tl_cli.commands.lr_find",
    "explain": "tl_cli.commands.explain",
}

USAGE = f"""tlcli {__version__}: transfer learning on timm backbones (Lightning + Hydra)

usage: tlcli <command> [hydra overrides] [hydra flags]

commands:
{chr(10).join(f"  {name:<8} {text}" for name, text in COMMANDS.items())}

examples:
  tlcli train                                     # embedded default: Fashion-MNIST source -> digits
  tlcli train strategy=freeze data.samples_per_class=10
  tlcli train -m strategy=freeze,finetune,extend_freeze,extend_finetune
  tlcli train --help                              # all config groups and Hydra flags
  tlcli train --cfg job                           # print the composed config
  tlcli eval ckpt=<run dir>                       # metrics on the run's test split
  tlcli predict ckpt=<run dir> inputs=photos/     # predictions.csv
  tlcli export ckpt=<run dir> format=onnx         # <run dir>/export/model.onnx
  tlcli report <multirun dir>                     # report.md / .csv / .png comparing a sweep's runs
  tlcli lr-find strategy=finetune                 # suggested optim.lr=... for that train command
  tlcli explain ckpt=<run dir> images=photos/     # <run dir>/explain/<image>.png heat maps
"""

# The process that runs the Hydra app. In the jobs of out-of-process launchers (joblib workers, submitit/SLURM
# jobs) it is None or, where the task was pickled by value, another process's id.
_launching_pid: int | None = None
# Whether this process has frozen its first command import out of the garbage collector (_import_command).
_imports_frozen = False


def _import_command(command: str) -> ModuleType:
    """The command's module. The first command import in a process pauses Python's garbage collector, then
    freezes what it imported; later ones (the next jobs of a multirun) import as usual.

    Importing torch, timm and Lightning creates ~550k objects that live as long as the process. While they are
    created, each full collection walks all of them (~0.9 s of the import), and at exit the interpreter's final
    collection walks them again (~1.5 s more from the last line to exit; docs/performance.md). `gc.freeze` moves
    them out of every later collection. Import-time garbage (~13k objects) is frozen with them rather than paying
    0.65 s for a collection. Only once: a later freeze would also take a finished job's uncollected cycles.
    """
    global _imports_frozen
    if _imports_frozen:
        return importlib.import_module(_MODULES[command])
    _imports_frozen = True
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(_MODULES[command])
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


# Commands that may start a Lightning Trainer on several devices: Lightning's launcher re-runs their command line
TRAINING_COMMANDS = ("train", "lr-find")


def _task(command: str, args: list[str], argv0: str) -> Callable:
    def task(cfg) -> float | None:
        fresh = None  # the run dir Hydra just made, while it holds only Hydra's record
        try:
            if command in TRAINING_COMMANDS:
                from tl_cli.ranks import rerun_command
                from tl_cli.run.command import fresh_run_dir

                fresh = fresh_run_dir(cfg)
                rerun_command(command, args, argv0)
            return _import_command(command).main(cfg)
        except SystemExit:
            raise
        except BaseException as ex:
            if fresh is not None and describe(ex)[1] == EXIT_USAGE:  # bad input: leave no empty run dir behind
                from tl_cli.run.command import discard_run_dir

                discard_run_dir(fresh)
            if os.environ.get("TLCLI_DEBUG"):
                raise
            if _launching_pid == os.getpid():  # one line, no traceback; inside Hydra so multirun stops cleanly
                raise SystemExit(report(ex)) from None
            # A job in another process: hand the one-line message back to the launching process, which prints
            # it. A SystemExit would end a submitit job before it writes its result (an opaque
            # UncompletedJobError there); a plain exception travels back inside Hydra's JobReturn.
            message, code = describe(ex)
            error = TlcliError(message)
            error.exit_code = code
            raise error from None

    return task


def _stray_data_override(command: str, args: list[str]) -> str | None:
    """eval's data group stays empty (= the run's own data) until data=<name> picks one, so a lone
    data.<key>=... would reach Hydra as an obscure AssertionError; find it to name it instead."""
    if command != "eval" or any(a.split("=", 1)[0].lstrip("+~") == "data" for a in args):
        return None
    return next((a for a in args if a.lstrip("+~").startswith("data.")), None)


def help_text(topic: str, command: str = "", *, _root_=None) -> str:
    """Text of the `--help` templates in configs/hydra/{default,command}.yaml, as `${tlcli_help:<topic>[,<command>]}`.

    strategies: one line per strategy with its `when` (tl_cli/transfer/strategies.py); about: the command's line of
    COMMANDS; groups: the config groups the command's own config composes (its defaults list), with their options,
    internal presets left out; config: the composed config with only the chosen dataset's keys
    (tl_cli/config/help.py).
    """
    if topic == "strategies":
        from tl_cli.transfer.strategies import help_text as strategies_help

        return strategies_help()
    if topic == "about":
        return COMMANDS.get(command, "")
    if topic == "groups":
        return _command_groups(command, _root_)
    if topic == "config":
        from tl_cli.config.help import config_text

        return config_text(_root_)
    raise ValueError(f"unknown help topic '{topic}'")


def _command_groups(command: str, root=None) -> str:
    """`== Configuration groups ==` of a command whose config composes groups (train: all of them; eval: data),
    else nothing."""
    import yaml

    from tl_cli.config.help import config_dirs, group_options
    from tl_cli.config.paths import config_dir

    top = config_dir()
    defaults = yaml.safe_load((top / f"{command}.yaml").read_text()).get("defaults", [])
    groups = [next(iter(d)) for d in defaults if isinstance(d, dict) and len(d) == 1]
    groups = sorted(g for g in groups if (top / g).is_dir() and not g.startswith("hydra"))
    if not groups:
        return ""
    dirs = config_dirs(root)
    lines = [f"{g}: {', '.join(group_options(g, dirs))}" for g in groups]
    return (
        "\n== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n"
        + "\n".join(lines)
        + "\n"
    )


def register_help_resolver() -> None:
    """`${tlcli_help:...}` for the help templates; only `--help` (or `--cfg hydra --resolve`) resolves them."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("tlcli_help"):
        OmegaConf.register_new_resolver("tlcli_help", help_text)


def run_hydra(command: str, args: list[str]) -> int:
    global _launching_pid
    import hydra

    _launching_pid = os.getpid()

    stray = _stray_data_override(command, args)
    if stray:
        return report(
            TlcliError(
                f"{stray} needs a dataset: eval uses the run's own data unless data=<name> picks one; "
                f"e.g. 'data=image_folder {stray}'"
            )
        )

    from tl_cli import ranks
    from tl_cli.config.commands import register_command_schemas
    from tl_cli.config.paths import config_dir, register_resolvers
    from tl_cli.config.schema import register_schemas
    from tl_cli.run import sweep_callback

    register_schemas()
    register_command_schemas()
    register_resolvers()
    register_help_resolver()
    ranks.reset()
    sweep_callback.forget()
    # Let composition errors reach us (we print them as one line) instead of Hydra's multi-line report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    config_name = command.replace("-", "_")  # lr-find: configs/lr_find.yaml
    saved_argv = sys.argv
    try:
        args = [*args, *ranks.other_rank_overrides(config_name)]
    except TlcliError as ex:
        return report(ex)
    task = _task(command, args, saved_argv[0])
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(task)
    sys.argv = [f"tlcli {command}", *args]  # what Hydra parses; the task sets the re-runnable command
    try:
        app()
    except SystemExit as ex:
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    except BaseException as ex:
        return report(ex)
    finally:
        sys.argv = saved_argv
        # the sweep folder, noted in this process by the Hydra callback of configs/hydra/default.yaml, also when
        # the jobs ran elsewhere; also after a failed job: the report lists what finished and what did not
        swept = sweep_callback.sweep_dir()
        if swept:
            print(f"report: tlcli report {swept}", flush=True)
    return 0


def run_report(args: list[str]) -> int:
    """`tlcli report <dir>`: no Hydra app, one positional folder."""
    try:
        return importlib.import_module(_MODULES["report"]).main(args)
    except BaseException as ex:
        return report(ex)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"tlcli {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        return report(choose_from("command", command, COMMANDS))
    if command == "train" and any(a.startswith("resume=") for a in args):
        from tl_cli.run.resume import resume_args

        try:
            args = resume_args(args)
        except TlcliError as ex:
            return report(ex)
    elif command in TRAINING_COMMANDS:  # a given trainer.max_epochs is honoured (a resumed run keeps its record)
        from tl_cli.config.epochs import honour_epochs

        args = honour_epochs(args)
    if command == "report":
        return run_report(args)
    return run_hydra(command, args)


if __name__ == "__main__":
    sys.exit(main())

"""The transfer strategies, all in one place.

A strategy is data: which weights the network starts from, whether the source network trains,
and whether new hidden layers are added. `apply_strategy` (tl_cli/transfer/strategies.py) is the one place that
acts on it; the table lives here, in config/, because the config checks read it too.
Everything else is derived from `STRATEGIES`: the presets configs/strategy/<name>.yaml must match it
(tests/unit/test_configs.py), the study report orders its columns by it, strategy=auto's table picks from it
(`transfer_strategy`), and `tlcli train --help` lists each strategy's `when` (`help_text`).

| strategy         | start from     | trains                 | extension |
|------------------|----------------|------------------------|-----------|
| freeze           | source weights | head only              | no        |
| finetune         | source weights | everything             | no        |
| extend_freeze    | source weights | extension + head       | yes       |
| extend_finetune  | source weights | everything             | yes       |
| scratch          | random init    | everything             | optional  |
"""

from __future__ import annotations

from dataclasses import dataclass

from tl_cli.errors import TlcliError, choose_from


@dataclass(frozen=True)
class Strategy:
    name: str
    use_source_weights: bool  # load model.weights into the backbone
    train_backbone: bool  # False: backbone frozen (requires_grad=False, kept in eval mode)
    extension: str  # "required" | "forbidden" | "optional"
    when: str  # one-line advice, shown by `tlcli train --help`


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("freeze", True, False, "forbidden", "small data, task similar to the source's"),
        Strategy("finetune", True, True, "forbidden", "large data, similar task"),
        Strategy("extend_freeze", True, False, "required", "small data, task needs extra features"),
        Strategy("extend_finetune", True, True, "required", "large data, task needs extra features"),
        Strategy("scratch", False, True, "optional", "baseline: what did transfer buy?"),
    )
}


AUTO = "auto"  # not a strategy: it picks one of STRATEGIES (tl_cli/run/auto.py dispatches it)


def is_auto(cfg) -> bool:
    """Whether a train config (or a run's saved one) asks for strategy=auto."""
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, "strategy.name") == AUTO


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise choose_from("strategy", name, STRATEGIES)
    return STRATEGIES[name]


def transfer_strategy(train_backbone: bool, extend: bool) -> Strategy:
    """The one strategy that starts from the source weights, trains the backbone or not, and adds hidden layers
    (extension required) or not (extension forbidden): the cells of the classic transfer table."""
    (match,) = (
        s
        for s in STRATEGIES.values()
        if s.use_source_weights
        and s.train_backbone == train_backbone
        and s.extension == ("required" if extend else "forbidden")
    )
    return match


def help_text() -> str:
    """One line per strategy: its name and when to use it (the strategy list of `tlcli train --help`)."""
    width = max(len(name) for name in STRATEGIES)
    return "\n".join(f"  {s.name:<{width}}  {s.when}" for s in STRATEGIES.values())


def check_extension(strategy: Strategy, hidden_dims: list[int]) -> None:
    """Refuse configs whose extension contradicts the strategy's name."""
    if strategy.extension == "required" and not hidden_dims:
        raise TlcliError(
            f"strategy={strategy.name} needs new hidden layers, but strategy.extension.hidden_dims is empty; "
            f"set e.g. strategy.extension.hidden_dims=[256]"
        )
    if strategy.extension == "forbidden" and hidden_dims:
        extended = transfer_strategy(strategy.train_backbone, extend=True).name
        raise TlcliError(
            f"strategy={strategy.name} adds no hidden layers, but strategy.extension.hidden_dims="
            f"{list(hidden_dims)}; use strategy={extended} instead"
        )

"""`strategy=auto`: measure the data and the source model, then pick a strategy by the classic table.

|                 | similar task | dissimilar task   |
|-----------------|--------------|-------------------|
| small data      | freeze       | extend_freeze     |
| large data      | finetune     | extend_finetune   |

and `scratch` when the source's features measure no better than random ones.

- small/large: train samples of the smallest class (after data.samples_per_class) < large_min_per_class.
- the probe: a logistic regression on standardised, frozen backbone features, fit on (at most
  probe_max_train) train samples and scored on (at most probe_max_val) val samples, never test, with the
  deterministic eval transform. It runs on the SOURCE features and on features of the same architecture
  initialised with torch.manual_seed(seed) (exactly the network strategy=scratch starts from).
- gain = acc(source) - acc(random); gain < min_gain: scratch.
- similar: the source's chance-corrected probe accuracy, (acc - chance) / (1 - chance) with chance = share
  of the most frequent val class, is >= similar_min_score: a linear head on the source's features is
  already most of the way from guessing to perfect. Otherwise the task needs new features (extension).

The chosen strategy then trains with its own preset (configs/strategy/<chosen>.yaml), exactly as
`strategy=<chosen>` would; `decide` is the pure rule, `choose` measures and applies it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tl_cli.errors import TlcliError
from tl_cli.transfer.strategies import transfer_strategy

log = logging.getLogger(__name__)

# (large data, similar task) -> strategy, from tl_cli/transfer/strategies.py: large data trains the backbone too,
# a dissimilar task adds new hidden layers
TABLE = {
    (large, similar): transfer_strategy(train_backbone=large, extend=not similar).name
    for large in (False, True)
    for similar in (True, False)
}
PROBE_BATCH = 256  # eval-mode features do not depend on the batch size


@dataclass(frozen=True)
class Figures:
    """What the probe measured."""

    samples_per_class: int  # train samples of the smallest class
    probe_acc_source: float
    probe_acc_random: float
    chance: float  # val share of the most frequent class: a constant guess's accuracy
    probe_train: int  # samples the probe was fit on
    probe_val: int  # samples it was scored on


def chance_corrected(acc: float, chance: float) -> float:
    """1 = perfect, 0 = no better than always guessing the most frequent class."""
    return (acc - chance) / (1.0 - chance) if chance < 1.0 else 0.0


def decide(
    samples_per_class: int,
    acc_source: float,
    acc_random: float,
    chance: float,
    large_min_per_class: int = 100,
    min_gain: float = 0.02,
    similar_min_score: float = 0.8,
) -> tuple[str, str]:
    """The rule: (chosen strategy, the rule that fired in words). Pure; no torch."""
    gain = acc_source - acc_random
    if gain < min_gain:
        return "scratch", (
            f"gain {gain:+.3f} < min_gain {min_gain:g}: the source's features are no better than random ones -> scratch"
        )
    large = samples_per_class >= large_min_per_class
    score = chance_corrected(acc_source, chance)
    similar = score >= similar_min_score
    chosen = TABLE[(large, similar)]
    size = f"{samples_per_class}/class {'>=' if large else '<'} {large_min_per_class}"
    task = f"{score:.3f} {'>=' if similar else '<'} {similar_min_score:g}"
    size = f"{'large' if large else 'small'} data ({size})"
    task = f"{'similar' if similar else 'dissimilar'} task (chance-corrected source probe acc {task})"
    return chosen, f"gain {gain:+.3f} >= min_gain {min_gain:g}; {size} + {task} -> {chosen}"


METHODS = ("race", "rule")
FROZEN_AT = ("race", "full")
CHOICES = ("freeze", "finetune", "extend_freeze", "extend_finetune", "scratch")


def check_settings(settings: DictConfig) -> None:
    """One-line errors for a method or thresholds out of range."""
    from tl_cli.errors import choose_from

    if settings.method not in METHODS:
        raise choose_from("strategy.auto.method", settings.method, METHODS)
    if settings.frozen_at not in FROZEN_AT:
        raise choose_from("strategy.auto.frozen_at", settings.frozen_at, FROZEN_AT)
    if settings.prior not in CHOICES:
        raise choose_from("strategy.auto.prior", settings.prior, CHOICES)
    for key in ("min_gain", "similar_min_score"):
        value = settings[key]
        if not 0.0 <= value <= 1.0:
            raise TlcliError(f"strategy.auto.{key}={value} must be between 0 and 1")
    if not 0.0 < settings.race_fraction < 1.0:
        raise TlcliError(f"strategy.auto.race_fraction={settings.race_fraction} must be between 0 and 1 (exclusive)")
    if not 0.0 <= settings.confirm_fraction < 1.0:
        raise TlcliError(f"strategy.auto.confirm_fraction={settings.confirm_fraction} must be in [0, 1) (0 = off)")
    if settings.scratch_lr_mult <= 0:
        raise TlcliError(f"strategy.auto.scratch_lr_mult={settings.scratch_lr_mult} must be > 0")
    if settings.tie_se < 0:
        raise TlcliError(f"strategy.auto.tie_se={settings.tie_se} must be >= 0")
    for key in ("large_min_per_class", "probe_max_train", "probe_max_val", "scratch_min_per_class"):
        if settings[key] < 1:
            raise TlcliError(f"strategy.auto.{key}={settings[key]} must be a positive integer")
    if settings.min_val_per_class < 0:
        raise TlcliError(f"strategy.auto.min_val_per_class={settings.min_val_per_class} must be >= 0")


def settings_of(cfg: DictConfig) -> DictConfig:
    """strategy.auto, or the schema defaults when strategy.name=auto was set without the auto preset."""
    from tl_cli.config.schema import AutoConfig

    defaults = OmegaConf.structured(AutoConfig)
    # over the schema's defaults: a resumed run's saved config may predate a setting
    return OmegaConf.merge(defaults, cfg.strategy.auto) if cfg.strategy.get("auto") is not None else defaults


def preset(name: str) -> DictConfig:
    """configs/strategy/<name>.yaml over the schema defaults: the strategy block `strategy=<name>` composes."""
    from tl_cli.config.paths import config_dir
    from tl_cli.config.schema import StrategyConfig

    return OmegaConf.merge(
        OmegaConf.structured(StrategyConfig), OmegaConf.load(config_dir() / "strategy" / f"{name}.yaml")
    )


def with_preset(cfg: DictConfig, chosen: str, settings: DictConfig) -> DictConfig:
    """A copy of the config that trains strategy=<chosen>, keeping the auto settings that chose it."""
    strategy = preset(chosen)
    strategy.auto = copy.deepcopy(settings)  # kept, so the config records how the choice was made
    resolved = copy.deepcopy(cfg)
    resolved.strategy = strategy
    return resolved


def choose(cfg: DictConfig, backbone_kwargs: dict[str, Any]) -> tuple[DictConfig, dict[str, Any]]:
    """Measure, decide, log; returns (the config with the chosen strategy's preset, the summary record).
    The settings were checked by the caller (build_job)."""
    settings = settings_of(cfg)
    _warn_ignored_overrides(cfg)
    start = time.perf_counter()
    figures = measure(cfg, backbone_kwargs, settings.probe_max_train, settings.probe_max_val)
    seconds = time.perf_counter() - start
    thresholds = {k: settings[k] for k in ("large_min_per_class", "min_gain", "similar_min_score")}
    chosen, rule = decide(
        figures.samples_per_class, figures.probe_acc_source, figures.probe_acc_random, figures.chance, **thresholds
    )
    log.info(
        "strategy=auto chose %s: %s [probe on %d train / %d val samples: source acc %.3f, random-init acc %.3f, "
        "chance %.3f; %.1f s]",
        chosen,
        rule,
        figures.probe_train,
        figures.probe_val,
        figures.probe_acc_source,
        figures.probe_acc_random,
        figures.chance,
        seconds,
    )
    resolved = with_preset(cfg, chosen, settings)
    strategy = resolved.strategy
    record = {
        "method": "rule",
        "chosen": chosen,
        "rule": rule,
        **asdict(figures),
        "gain": round(figures.probe_acc_source - figures.probe_acc_random, 6),
        "source_score": round(chance_corrected(figures.probe_acc_source, figures.chance), 6),
        **thresholds,
        "seconds": round(seconds, 3),
        # the strategy block that trained; tlcli eval/predict/export rebuild the network from it
        "preset": {k: v for k, v in OmegaConf.to_container(strategy, resolve=True).items() if k != "auto"},
    }
    return resolved, record


def _warn_ignored_overrides(cfg: DictConfig) -> None:
    from tl_cli.config.schema import StrategyConfig

    defaults = OmegaConf.structured(StrategyConfig)
    changed = [k for k in ("backbone_lr_mult", "extension") if cfg.strategy[k] != defaults[k]]
    if changed:
        log.warning(
            "strategy=auto trains with the chosen strategy's preset: ignoring strategy.%s", ", strategy.".join(changed)
        )


def measure(cfg: DictConfig, backbone_kwargs: dict[str, Any], max_train: int, max_val: int) -> Figures:
    """Probe accuracy of source and random-init features (train -> val), and the smallest train class."""
    from tl_cli.data.datamodule import TransformedSubset, make_datamodule, resolve_data_config
    from tl_cli.data.features import extract
    from tl_cli.transfer.network import TransferNet
    from tl_cli.transfer.weights import create_backbone

    torch.manual_seed(cfg.seed)  # model.weights=null: the "source" is then this very random init
    source, _ = create_backbone(cfg.model.backbone, cfg.model.weights, **backbone_kwargs)
    torch.manual_seed(cfg.seed)  # the network strategy=scratch starts from
    random_init, _ = create_backbone(cfg.model.backbone, None, **backbone_kwargs)
    data_config = resolve_data_config(source, cfg.data, cfg.model.in_chans, cfg.model.img_size)
    dm = make_datamodule(cfg.data, data_config, cfg.seed, cfg.trainer)

    subsets, labels = {}, {}
    smallest_class = int(np.bincount(split_labels(dm.splits["train"]), minlength=dm.num_classes).min())
    for split, cap in (("train", max_train), ("val", max_val)):
        full = dm.splits[split]
        y = split_labels(full)
        keep = subsample(y, cap, dm.num_classes, cfg.seed, split)
        subsets[split] = TransformedSubset(full.base, full.indices[keep], full.label_map, full.mode, dm.eval_transform)
        labels[split] = y[keep]

    device, forward_context, channels_last = _inference_setup(cfg)
    accs = {}
    for name, backbone in (("source", source), ("random", random_init)):
        net = TransferNet(backbone, dm.num_classes).to(device).eval()
        if channels_last:
            net.to(memory_format=torch.channels_last)
        feats = {}
        for split, subset in subsets.items():
            loader = torch.utils.data.DataLoader(subset, batch_size=PROBE_BATCH, shuffle=False)
            feats[split], _ = extract(net, loader, dm.normalize, device, forward_context, channels_last)
        accs[name] = probe_accuracy(feats["train"].numpy(), labels["train"], feats["val"].numpy(), labels["val"])
    val_counts = np.bincount(labels["val"], minlength=dm.num_classes)
    return Figures(
        samples_per_class=smallest_class,
        probe_acc_source=round(accs["source"], 6),
        probe_acc_random=round(accs["random"], 6),
        chance=round(float(val_counts.max() / val_counts.sum()), 6),
        probe_train=len(labels["train"]),
        probe_val=len(labels["val"]),
    )


def _inference_setup(cfg: DictConfig) -> tuple[torch.device, Any, bool]:
    """Device, autocast context and memory format of the training run (tl_cli/hardware.py), for fast
    extraction."""
    from tl_cli import hardware

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = hardware.uses_gpu(accelerator) and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    precision, channels_last, _ = hardware.resolve(
        cfg.trainer.get("precision", "auto"), cfg.model.channels_last, accelerator
    )
    dtype = hardware.autocast_dtype(precision)
    if dtype is None or (dtype == torch.float16 and not on_gpu):
        return device, contextlib.nullcontext, channels_last
    return device, functools.partial(torch.autocast, device.type, dtype=dtype), channels_last


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> float:
    """Val accuracy of a logistic regression on standardised features (sklearn defaults, C=1)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    # one BLAS thread: for matrices this small, more threads only wait on each other (20x slower on 2 busy cores)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_train, y_train)
    return float(np.mean(probe.predict(x_val) == y_val))


def split_labels(subset) -> np.ndarray:
    """Class labels of a split's samples, without decoding images where the dataset lists them."""
    base = subset.base
    raw = getattr(base, "labels", None)  # in-memory arrays (digits, fashion_mnist, synthetic)
    if raw is None and hasattr(getattr(base, "reader", None), "samples"):  # timm ImageDataset (image_folder)
        raw = [target for _, target in base.reader.samples]
    if raw is None:
        return np.array([subset.base[int(i)][1] for i in subset.indices], dtype=np.int64)
    return np.array([subset.label_map[int(raw[int(i)])] for i in subset.indices], dtype=np.int64)


def subsample(labels: np.ndarray, cap: int, num_classes: int, seed: int, split: str) -> np.ndarray:
    """Positions of at most `cap` samples, stratified by class and seeded; all of them when there are fewer."""
    positions = np.arange(len(labels))
    if len(labels) <= cap:
        return positions
    if cap < num_classes:
        raise TlcliError(f"strategy.auto.probe_max_{split}={cap} is below the {num_classes} classes; raise it")
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(positions, train_size=cap, stratify=labels, random_state=seed)
    except ValueError:  # a class with a single sample cannot be stratified
        keep = np.random.default_rng(seed).choice(positions, size=cap, replace=False)
    return np.sort(keep)

"""The cells `strategy=auto` (race v3) is tuned on, and the cells it is judged on, fixed before any tuning.

Every cell is a new user's run: the default recipe (`tlcli train`, augmentation on, the default LR, 10 epochs,
300 optimizer steps at least), changed only by the overrides that define the cell.

- TUNING: the race's settings may be chosen on these, from **val** curves only (`python -m study.race_replay`);
  their jobs run with `test=false`, so no test accuracy exists to peek at.
- UNTOUCHED: nothing is tuned on them. They are scored once, after the settings are committed
  (`python -m study.auto_eval`), on 3 seeds each.
- ISSUE: the two cells where issue 32 measured race v2 (its Fashion-MNIST subset was not named; this is one);
  untouched too, reported on their own.

The verdict rule, fixed with the cells: on a cell, auto is *within noise* of the best fixed strategy (the one with
the best mean test acc over the seeds, each strategy at its defaults) when its mean paired difference is at least
-1.5 points or the 95 % paired t-interval of (auto - best) over the seeds covers 0. The goal: within noise on
>= 80 % of the untouched cells, mean regret <= the best constant strategy's, cost <= 1.5x a finetune run
(process wall time, measured back to back in the same `auto_eval` run).
"""

from __future__ import annotations

from tl_cli.config.strategies import STRATEGIES

EMBEDDED = ()  # the default source: test_resnet trained on all of Fashion-MNIST at 32 px (tl_cli/assets)
IMAGENET = (  # EfficientNet-Lite0, ImageNet-1k (make imagenet-source); batch 16 as the ImageNet study
    "model=timm",
    "model.backbone=efficientnet_lite0",
    "model.weights=${paths.log_dir}/sources/efficientnet_lite0_in1k.safetensors",
    "model.in_chans=3",
    "model.img_size=64",
    "data.batch_size=16",
)


def _fashion(classes: list[int], per_class: int, *extra: str) -> tuple[str, ...]:
    return (
        "data=fashion_mnist",
        f"data.classes=[{','.join(map(str, classes))}]",
        f"data.samples_per_class={per_class}",
        *extra,
    )


def _digits(per_class: int | None, *extra: str) -> tuple[str, ...]:
    size = () if per_class is None else (f"data.samples_per_class={per_class}",)
    return ("data=digits", *size, *extra)


TUNING: dict[str, tuple[str, ...]] = {
    "tune_digits_5": _digits(5),
    "tune_digits_100": _digits(100),
    "tune_fashion_tops_10": _fashion([0, 2, 4, 6], 10),
    "tune_fashion_all_50": ("data=fashion_mnist", "data.samples_per_class=50"),
    "tune_in1k_fashion_10": (*IMAGENET, *_fashion([1, 5, 7, 8, 9], 10)),
}

UNTOUCHED: dict[str, tuple[str, ...]] = {
    "fashion_odd_5": _fashion([1, 3, 5, 7, 9], 5),
    "fashion_mixed_200": _fashion([2, 3, 5, 8], 200),
    "fashion_shoes_bags_20": _fashion([5, 7, 8, 9], 20),
    "digits_all": _digits(None),
    "in1k_digits_20": (*IMAGENET, *_digits(20)),
    "fashion_48px_20": _fashion([0, 3, 6, 9], 20, "model.img_size=48"),  # larger than the source's 32 px
}

ISSUE: dict[str, tuple[str, ...]] = {
    "issue_fashion5_20": _fashion([1, 5, 7, 8, 9], 20),
    "issue_digits_20": _digits(20),
}

# Race v3.1 (a second look at a frozen lead) was designed after race v3 failed on in1k_digits_20, which became a
# tuning cell for it (its val curves only). Fixed here before race v3.1 ran anywhere: its new untouched cells. The
# other UNTOUCHED and ISSUE cells informed no setting of v3.1 (their results were seen, none were tuned on).
MOVED_TO_TUNING_V31 = ("in1k_digits_20",)
UNTOUCHED_V31: dict[str, tuple[str, ...]] = {
    "in1k_digits_10": (*IMAGENET, *_digits(10)),
    "in1k_digits_50": (*IMAGENET, *_digits(50)),
}

SEEDS = (0, 1, 2)
TUNING_SEEDS = (0, 1)
FIXED = tuple(STRATEGIES)  # freeze, finetune, extend_freeze, extend_finetune, scratch
WITHIN_POINTS = 1.5  # the verdict rule above


def cells(group: str) -> dict[str, tuple[str, ...]]:
    """TUNING, UNTOUCHED, ISSUE or UNTOUCHED_V31 by name (lower case)."""
    groups = {"tuning": TUNING, "untouched": UNTOUCHED, "issue": ISSUE, "untouched_v31": UNTOUCHED_V31}
    if group not in groups:
        raise KeyError(f"no cell group {group!r}: choose from {', '.join(groups)}")
    return groups[group]

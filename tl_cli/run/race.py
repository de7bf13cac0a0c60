"""`strategy=auto` with `strategy.auto.method=race` (the default): measure the strategies on val at a bounded cost,
then train the pick in full, without training it twice. Cost: about 1 + 2 x race_fraction finetune runs.

1. A val set whose smallest class has fewer than `min_val_per_class` images cannot tell the strategies apart:
   no race, the prior (`strategy.auto.prior`).
2. The frozen strategies (freeze, extend_freeze) train their full budget on cached features of **un-augmented**
   images, even when the run augments: a proxy that costs one forward pass over train and val (stage "proxy").
   Each is scored by its best val acc over its first race epochs (`frozen_at=race`) or over all its epochs
   (`frozen_at=full`).
3. The trainable ones (finetune, extend_finetune; scratch with >= `scratch_min_per_class` train images in every
   class, at `scratch_lr_mult` x optim.lr) train `race_fraction` of trainer.max_epochs under the full budget's LR
   schedule (StopAfterEpochs), and save where they stopped.
4. One pick, at that point, over all the candidates by val acc. Ties (within `tie_se` binomial standard errors of
   the best) go to the prior, then finetune, extend_finetune, freeze, extend_freeze, scratch.
5. A trainable pick continues, in the run dir itself, from the checkpoint where it stopped: the schedule depends on
   the epoch alone, so this is the run it would have been uninterrupted, and its best checkpoint so far comes along
   (`continue_checkpoint`). A frozen pick trains in the run dir as strategy=<pick> would (with the run's
   augmentation; from the cached features when there is none).

Candidates run in <run dir>/auto/<strategy>/ (their metrics.csv and checkpoints); what ran and the pick go to the
log, summary.json (`strategy_auto`) and auto/race.json, which a resumed run reads instead of racing again.
The settings' provenance (chosen on val curves only): docs/strategies-and-auto.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tl_cli.run.training import (
    Fitted,
    TransferJob,
    attach_feature_cache,
    build_job,
    fit,
    fit_run,
    make_trainer,
    run_callbacks,
    to_channels_last,
)
from tl_cli.rundir import METRICS, RunDir
from tl_cli.transfer.auto import preset, settings_of, split_labels, with_preset
from tl_cli.transfer.callbacks import GracefulInterrupt, StopAfterEpochs

log = logging.getLogger(__name__)

ORDER = ("finetune", "extend_finetune", "freeze", "extend_freeze", "scratch")  # ties: first in this order
FROZEN = ("freeze", "extend_freeze")
FOLDER = "auto"
RECORD = "race.json"
SETTINGS = (
    "race_fraction",
    "confirm_fraction",
    "scratch_min_per_class",
    "scratch_lr_mult",
    "min_val_per_class",
    "tie_se",
    "frozen_at",
)


@dataclass
class Score:
    """One candidate: the val acc it is picked by, after `epochs` epochs (`steps` optimizer steps)."""

    val_acc: float
    epochs: int
    steps: int
    seconds: float
    stage: str  # proxy (frozen, un-augmented cached features) | race (stopped early) | second look (raced further)
    checkpoint: str | None = None  # race: where it stopped, to continue from
    full_val_acc: float | None = None  # proxy: the best val acc over all its epochs


@dataclass
class Race:
    """What the race measured and picked; saved as auto/race.json before the pick trains."""

    val_images: int
    val_min_per_class: int
    train_min_per_class: int
    race_epochs: int
    scores: dict[str, Score] = field(default_factory=dict)
    chosen: str | None = None
    why: str = ""
    seconds: float = 0.0
    config_sha: str | None = None  # the config it raced under

    @property
    def continues(self) -> bool:
        """Whether the pick continues from its race checkpoint (a trainable candidate that raced)."""
        score = self.scores.get(self.chosen or "")
        return score is not None and score.stage in ("race", "second look")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Race | None:
        """The saved race; None for one saved by an older tlcli (another layout: race again)."""
        try:
            raw = json.loads(path.read_text())
            raw["scores"] = {k: Score(**v) for k, v in raw["scores"].items()}
            return cls(**raw)
        except (TypeError, KeyError, ValueError):
            return None


def trainable_candidates(train_min_per_class: int, scratch_min_per_class: int) -> list[str]:
    """finetune and extend_finetune; scratch too where every class has enough train images for it to matter."""
    scratch = ["scratch"] if train_min_per_class >= scratch_min_per_class else []
    return ["finetune", "extend_finetune", *scratch]


def race_epochs(fraction: float, epochs: int) -> int:
    """Epochs a racing candidate trains: `fraction` of the budget, at least 1, stopping before the end (0: no race)."""
    return min(max(1, math.ceil(fraction * epochs)), epochs - 1)


def val_noise(acc: float, val_images: int) -> float:
    """Binomial standard error of a val accuracy; at least one val image's worth."""
    return max(math.sqrt(acc * (1.0 - acc) / val_images), 1.0 / val_images)


def best_before(curve: dict[int, float], epochs: int | None) -> float:
    """A candidate's score from its val curve: the best val acc over its first `epochs` epochs (None: all)."""
    return round(max(acc for epoch, acc in curve.items() if epochs is None or epoch < epochs), 6)


def preference(prior: str) -> list[str]:
    return [prior, *(s for s in ORDER if s != prior)]


def pick(scores: dict[str, float], val_images: int, tie_se: float, prior: str) -> tuple[str, str]:
    """(the chosen candidate, why): the best val acc; among those tied with it, the first in preference(prior)."""
    best = max(scores.values())
    margin = tie_se * val_noise(best, val_images)
    tied = [s for s in preference(prior) if s in scores and scores[s] >= best - margin]
    listed = ", ".join(f"{s} {scores[s]:.3f}" for s in sorted(scores, key=lambda s: -scores[s]))
    if len(tied) == 1:
        return tied[0], f"best val acc ({listed})"
    return tied[0], (
        f"{', '.join(tied)} tied within {tie_se:g} se ({margin:.3f}) of the best val acc ({listed}); "
        f"{tied[0]} comes first in the preference order"
    )


def race_and_fit(cfg: DictConfig, run: RunDir, config_sha: str, resume_from: str | None) -> Fitted:
    """Race the candidates (or read a finished race back), fit the pick in the run dir, record the choice."""
    started = time.perf_counter()  # its settings were checked by tl_cli/run/auto.py's fit
    saved = run / FOLDER / RECORD
    saved.parent.mkdir(parents=True, exist_ok=True)
    race = saved_race(saved, config_sha, resume_from)
    if race is None:
        race = _race(cfg, run)
        race.config_sha = config_sha
        race.save(saved)
    for line in race_lines(race):
        log.info("strategy=auto %s", line)
    start = resume_from
    if start is None and race.continues:
        start = continue_checkpoint(run, race.chosen, race.scores[race.chosen].checkpoint)
    final = _config_for(cfg, race.chosen, run)
    fitted = fit_run(final, run, config_sha, start)
    return _record(fitted, race, final, time.perf_counter() - started)


def saved_race(path: Path, config_sha: str, resume_from: str | None) -> Race | None:
    """The finished race in the run dir when it belongs to this run: raced under this config, or the run being
    resumed (`resume=` continues whatever the run dir holds). None: race (again), also when the pick's race
    checkpoint is gone before it continued (a finished run's candidates were tidied away)."""
    race = Race.load(path) if path.is_file() else None
    if race is None or race.chosen is None:
        return None
    if not resume_from and race.config_sha != config_sha:
        log.info("strategy=auto: %s was raced under another config; racing again", path)
        return None
    if race.continues and not resume_from and not Path(race.scores[race.chosen].checkpoint or "").is_file():
        log.info("strategy=auto: the pick's race checkpoint is gone; racing again")
        return None
    return race


def _race(cfg: DictConfig, run: RunDir) -> Race:
    """The frozen candidates on their proxy, the trainable ones for race_fraction of the epochs; the pick."""
    settings, started = settings_of(cfg), time.perf_counter()
    first = build_job(_candidate_config(cfg, "freeze", run))
    race = _class_counts(first, cfg, settings.race_fraction)
    if race.val_min_per_class < max(settings.min_val_per_class, 1):
        race.chosen = settings.prior
        race.why = (
            f"no race: the smallest val class has {race.val_min_per_class} images "
            f"(< strategy.auto.min_val_per_class={settings.min_val_per_class}), too few to tell strategies apart; "
            f"the prior {settings.prior}"
        )
        return race
    if race.race_epochs < 1:
        race.chosen = settings.prior
        race.why = f"no race: trainer.max_epochs={cfg.trainer.max_epochs} leaves no epoch to stop at; the prior"
        return race
    scored_at = race.race_epochs if settings.frozen_at == "race" else None
    for name in FROZEN:
        job = first if name == "freeze" else None
        race.scores[name] = _fit_candidate(_candidate_config(cfg, name, run), run / FOLDER / name, None, job, scored_at)
    for name in trainable_candidates(race.train_min_per_class, settings.scratch_min_per_class):
        folder = run / FOLDER / name
        race.scores[name] = _fit_candidate(_candidate_config(cfg, name, run), folder, race.race_epochs)
    scores = {name: score.val_acc for name, score in race.scores.items()}
    race.chosen, race.why = pick(scores, race.val_images, settings.tie_se, settings.prior)
    second = race_epochs(settings.confirm_fraction, int(cfg.trainer.max_epochs)) if settings.confirm_fraction else 0
    if race.chosen in FROZEN and second > race.race_epochs:
        _second_look(cfg, run, race, second)
    race.seconds = round(time.perf_counter() - started, 3)
    return race


def _second_look(cfg: DictConfig, run: RunDir, race: Race, epochs: int) -> None:
    """A frozen head converges in its first epochs while a trainable network is still adapting, so an early lead
    of a frozen candidate is checked once more: the best trainable candidate trains on to `epochs` epochs, and the
    pick is made again between it and the frozen candidates scored at the same epoch (their proxy curves)."""
    settings = settings_of(cfg)
    trainable = {n: s.val_acc for n, s in race.scores.items() if s.stage == "race"}
    if not trainable:
        return
    challenger, _ = pick(trainable, race.val_images, settings.tie_se, settings.prior)
    before = race.scores[challenger]
    folder = run / FOLDER / challenger
    after = _fit_candidate(_candidate_config(cfg, challenger, run), folder, epochs, resume_from=before.checkpoint)
    after.seconds = round(before.seconds + after.seconds, 3)
    race.scores[challenger] = after
    scores = {challenger: after.val_acc}
    for name in FROZEN:
        curve = RunDir(run / FOLDER / name).val_curve()
        rescored = settings.frozen_at == "race" and curve
        scores[name] = best_before(curve, epochs) if rescored else race.scores[name].val_acc
    first = race.chosen
    race.chosen, why = pick(scores, race.val_images, settings.tie_se, settings.prior)
    race.why = f"second look at {epochs} epochs ({first} led at {race.race_epochs}): {why}"


def race_lines(race: Race) -> list[str]:
    """What the race ran and picked, for the log: a line per candidate, then the pick and why."""
    lines = []
    for name, s in race.scores.items():
        how = "cached un-augmented features" if s.stage == "proxy" else "the run's recipe, stopped early"
        stage = "second" if s.stage == "second look" else s.stage
        full = f", {s.full_val_acc:.3f} over all epochs" if s.full_val_acc is not None else ""
        lines.append(
            f"race: {name:<15} {stage:<6} ({how}): {s.epochs} ep, {s.steps} steps, {s.seconds:.1f} s, "
            f"val acc {s.val_acc:.3f}{full}"
        )
    action = "continues from its race checkpoint" if race.continues else "trains in the run dir"
    return [*lines, f"picks {race.chosen} ({action}): {race.why}"]


def _class_counts(job: TransferJob, cfg: DictConfig, fraction: float) -> Race:
    dm = job.datamodule
    counts = {s: np.bincount(split_labels(dm.splits[s]), minlength=dm.num_classes) for s in ("train", "val")}
    epochs = int(cfg.trainer.max_epochs)
    return Race(
        val_images=int(counts["val"].sum()),
        val_min_per_class=int(counts["val"].min()),
        train_min_per_class=int(counts["train"].min()),
        race_epochs=race_epochs(fraction, epochs),
    )


def _candidate_config(cfg: DictConfig, name: str, run: RunDir) -> DictConfig:
    """strategy=<name> writing into auto/<name>/. A frozen one is its proxy: un-augmented, unmixed images, so its
    features come from the cache (one forward pass) whatever the run's augmentation."""
    candidate = _config_for(cfg, name, run)
    candidate.paths.output_dir = str(run / FOLDER / name)
    if name in FROZEN:
        candidate.data.augment = False
        candidate.data.mixup = candidate.data.cutmix = 0.0
    return candidate


def _config_for(cfg: DictConfig, name: str, run: RunDir) -> DictConfig:
    """The config that trains strategy=<name>; the race's frozen features shared through a disk cache."""
    chosen = with_preset(cfg, name, settings_of(cfg))
    if name == "scratch":  # every weight trains from random init: it wants a lower LR than the head of a transfer
        chosen.optim.lr = float(chosen.optim.lr) * float(settings_of(cfg).scratch_lr_mult)
    if not chosen.data.feature_cache_dir:
        chosen.data.feature_cache_dir = str(run / FOLDER / "feature_cache")
    return chosen


def _fit_candidate(
    cfg: DictConfig,
    folder: Path,
    stop_epoch: int | None,
    job: TransferJob | None = None,
    scored_at: int | None = None,
    resume_from: str | None = None,
) -> Score:
    """Fit one candidate in its folder (CSV metrics, checkpoints), no test. A racing one stops after stop_epoch
    epochs and saves where it stopped (resumed from there for the second look); a frozen one trains in full and is
    scored over its first `scored_at` epochs (None: all)."""
    from tl_cli.transfer.metrics_log import CSVLogger

    if resume_from is None:  # a fresh race: an earlier race's curve in this folder is not this one's
        (folder / METRICS).unlink(missing_ok=True)
    job = job or build_job(cfg)
    callbacks, _ = run_callbacks(cfg, folder)
    # Ctrl-C in a candidate stops the whole command: its run-dir resume hint would point at the candidate's folder
    callbacks = [c for c in callbacks if not isinstance(c, GracefulInterrupt)]
    callbacks += [StopAfterEpochs(stop_epoch)] if stop_epoch else []
    logger = CSVLogger(folder, name="", version="")
    trainer, channels_last = make_trainer(cfg.trainer, cfg.model.channels_last, callbacks, [logger])
    if channels_last:
        to_channels_last(job)
    attach_feature_cache(cfg, job, trainer, channels_last, splits=("train", "val"))  # candidates are not tested
    result = fit(trainer, job, resume_from)
    seconds, steps, epochs = round(result.train_seconds, 3), trainer.global_step, trainer.current_epoch
    val_acc = round(result.metrics["val/acc"], 6)
    if stop_epoch:
        checkpoint = str(folder / "checkpoints" / "race.ckpt")
        trainer.save_checkpoint(checkpoint)
        return Score(val_acc, epochs, steps, seconds, "race" if resume_from is None else "second look", checkpoint)
    curve = RunDir(folder).val_curve()
    score = best_before(curve, scored_at) if curve else val_acc
    return Score(score, epochs, steps, seconds, "proxy", full_val_acc=val_acc)


def continue_checkpoint(run: RunDir, name: str, race_checkpoint: str) -> str:
    """The pick's race checkpoint made the run dir's own: the checkpoint callbacks' saved paths moved from
    auto/<name>/ to the run dir, and their best checkpoints copied there. Lightning keeps a callback's best score
    only when its folder is unchanged; otherwise the continued run would choose its best epoch among the continued
    epochs alone."""
    state = torch.load(race_checkpoint, map_location="cpu", weights_only=False)
    old, new = os.path.realpath(run / FOLDER / name), os.path.realpath(run.path)
    for key, callback in state.get("callbacks", {}).items():
        if not key.startswith("ModelCheckpoint"):
            continue
        if not _under(callback.get("dirpath"), old):
            log.info("strategy=auto: %s saves outside %s; its best score starts afresh", key, old)
            continue
        for best in {callback.get("best_model_path"), *callback.get("best_k_models", {})}:
            if _under(best, old) and Path(best).is_file():
                Path(_rebased(best, old, new)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(best, _rebased(best, old, new))
        _rebase(callback, old, new)
    continued = Path(race_checkpoint).with_name("continue.ckpt")  # in auto/<name>/: tidy() removes it
    torch.save(state, continued)
    return str(continued)


def _under(path: object, folder: str) -> bool:
    return isinstance(path, str) and (path == folder or path.startswith(folder + os.sep))


def _rebased(path: str, old: str, new: str) -> str:
    return new + path[len(old) :] if _under(path, old) else path


def _rebase(callback: dict, old: str, new: str) -> None:
    """A ModelCheckpoint's saved paths, from folder `old` to folder `new`."""
    for key in ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path"):
        if key in callback:
            callback[key] = _rebased(callback[key], old, new)
    if "best_k_models" in callback:
        callback["best_k_models"] = {_rebased(k, old, new): v for k, v in callback["best_k_models"].items()}


def tidy(run: RunDir) -> None:
    """After the final run: drop the candidates' checkpoints and the race's own feature cache (their metrics.csv,
    race.json and the choice in summary.json stay)."""
    folder = run / FOLDER
    for checkpoint in folder.rglob("*.ckpt"):
        checkpoint.unlink()
    shutil.rmtree(folder / "feature_cache", ignore_errors=True)


def _record(fitted: Fitted, race: Race, final: DictConfig, seconds: float) -> Fitted:
    """strategy_auto in summary.json (with the LR the pick trained at: summary.json's `lr` stays the command's
    optim.lr, which a sweep groups by), and the log line of how the pick ended."""
    settings, chosen = final.strategy.auto, race.chosen
    block = OmegaConf.to_container(preset(chosen), resolve=True)  # eval/predict/export rebuild the network from it
    scores = {name: asdict(score) for name, score in race.scores.items()}
    for score in scores.values():
        score.pop("checkpoint", None)
    trainer = fitted.trainer
    result = {"val_acc": round(fitted.result.metrics["val/acc"], 6), "epochs": trainer.current_epoch,
              "steps": trainer.global_step, "seconds": round(fitted.result.train_seconds, 3)}  # fmt: skip
    fitted.job.auto = {
        "method": "race",
        "chosen": chosen,
        "why": race.why,
        "continued": race.continues,
        "candidates": scores,
        "final": result,
        "race_epochs": race.race_epochs,
        "val_images": race.val_images,
        "val_min_per_class": race.val_min_per_class,
        "train_min_per_class": race.train_min_per_class,
        "race_seconds": race.seconds,
        "seconds": round(seconds, 3),  # the race and the final fit (this process; before the test)
        "lr": float(final.optim.lr),  # scratch trains at optim.lr x scratch_lr_mult
        **{k: settings[k] for k in (*SETTINGS, "prior")},
        "preset": {k: v for k, v in block.items() if k != "auto"},
    }
    log.info(
        "strategy=auto chose %s by race: %s epochs, %s steps, val acc %.3f (race %.1f s, all %.1f s)",
        chosen, result["epochs"], result["steps"], result["val_acc"], race.seconds, seconds,
    )  # fmt: skip
    return fitted

"""`strategy=auto` with `strategy.auto.method=race` (the default): measure the strategies on val at a bounded cost,
then train the winner in full, without training it twice.

1. A val set whose smallest class has fewer than `min_val_per_class` images cannot tell the strategies apart:
   no race, the prior (`strategy.auto.prior`, finetune: the best constant strategy in the studies).
2. The frozen strategies (freeze, extend_freeze) train their full budget on cached features: seconds.
3. The trainable ones (finetune, extend_finetune; scratch with >= `scratch_min_per_class` train images in every
   class, at `scratch_lr_mult` x optim.lr) train `race_fraction` of trainer.max_epochs under the full budget's LR
   schedule (StopAfterEpochs). The best by val acc continues, in the run dir itself, from the checkpoint where it
   stopped: the schedule depends on the epoch alone, so this is the run it would have been uninterrupted. Its
   best checkpoint so far comes along (`continue_checkpoint`), so the best epoch is chosen over all the epochs.
4. The final pick: the continued run against the frozen ones, by val acc. Ties (within `tie_se` binomial standard
   errors of the best val acc) go to the prior, then finetune, extend_finetune, freeze, extend_freeze, scratch: the
   studies' best constant first; cost no longer separates them, it is already spent. If a frozen strategy wins, the
   continued run moves to auto/<name>/continued/ and the frozen winner retrains in the run dir (seconds: its
   features come from the cache).

Candidates run in <run dir>/auto/<strategy>/ (their metrics.csv and checkpoints); the choice goes to summary.json
(`strategy_auto`), one log line, and auto/race.json, which a resumed run reads instead of racing again.
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
from tl_cli.rundir import RunDir
from tl_cli.transfer.auto import check_settings, preset, settings_of, split_labels, with_preset
from tl_cli.transfer.callbacks import GracefulInterrupt, StopAfterEpochs

log = logging.getLogger(__name__)

ORDER = ("finetune", "extend_finetune", "freeze", "extend_freeze", "scratch")  # ties: first in this order
FROZEN = ("freeze", "extend_freeze")
FOLDER = "auto"
RECORD = "race.json"
SETTINGS = ("race_fraction", "scratch_min_per_class", "scratch_lr_mult", "min_val_per_class", "tie_se")
MOVED_ASIDE = ("checkpoints", "metrics.csv", "hparams.yaml")  # a continued run's own files in the run dir


@dataclass
class Score:
    """One candidate's val acc (best epoch so far) after `epochs` epochs."""

    val_acc: float
    epochs: int
    seconds: float
    stage: str  # full | race | continued
    checkpoint: str | None = None  # race: where it stopped, to continue from


@dataclass
class Race:
    """What the race measured before the final run; saved as auto/race.json."""

    val_images: int
    val_min_per_class: int
    train_min_per_class: int
    race_epochs: int
    scores: dict[str, Score] = field(default_factory=dict)
    leader: str | None = None  # the trainable candidate that continues to the full budget
    chosen: str | None = None  # set when the choice needs no continued run
    why: str = ""
    seconds: float = 0.0
    config_sha: str | None = None  # the config it raced under
    final: str | None = None  # a frozen winner over the continued leader, saved before it retrains: a resume
    final_why: str = ""  # retrains it, not the leader

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Race:
        raw = json.loads(path.read_text())
        raw["scores"] = {k: Score(**v) for k, v in raw["scores"].items()}
        return cls(**raw)


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
    """Race the candidates (or read a finished race back), fit the winner in the run dir, record the choice."""
    settings, started = settings_of(cfg), time.perf_counter()
    check_settings(settings)
    saved = run / FOLDER / RECORD
    saved.parent.mkdir(parents=True, exist_ok=True)
    race = saved_race(saved, config_sha, resume_from)
    if race is None:
        race = _race(cfg, run)
        race.config_sha = config_sha
        race.save(saved)
    if race.chosen is not None:  # no race: the prior
        return _fit_final(cfg, run, race, race.chosen, race.why, config_sha, resume_from, started)
    if race.final is None:
        fitted, final = _continue_leader(cfg, run, race, config_sha, resume_from)
        if race.final == race.leader:
            return _record(fitted, race, race.final, race.final_why, final, time.perf_counter() - started)
        _set_aside(run, race.leader)
        race.save(saved)  # a frozen winner: a resumed run retrains it, not the leader
        resume_from = None
    return _fit_final(cfg, run, race, race.final, race.final_why, config_sha, resume_from, started)


def _continue_leader(
    cfg: DictConfig, run: RunDir, race: Race, config_sha: str, resume_from: str | None
) -> tuple[Fitted, DictConfig]:
    """The leader trains on to the full budget in the run dir; then the final pick, by val acc, between it and the
    frozen candidates (race.final, race.final_why)."""
    leader, settings = race.leader, settings_of(cfg)
    start = resume_from or continue_checkpoint(run, leader, race.scores[leader].checkpoint)
    final = _config_for(cfg, leader, run)
    fitted = fit_run(final, run, config_sha, start)
    # its race slice and the continuation (this process: a resumed run counts from its resume)
    seconds = round(race.scores[leader].seconds + fitted.result.train_seconds, 3)
    val_acc = round(fitted.result.metrics["val/acc"], 6)
    race.scores[leader] = Score(val_acc, fitted.trainer.current_epoch, seconds, "continued")
    finals = {name: s.val_acc for name, s in race.scores.items() if name == leader or name in FROZEN}
    race.final, race.final_why = pick(finals, race.val_images, settings.tie_se, settings.prior)
    return fitted, final


def _fit_final(
    cfg: DictConfig, run: RunDir, race: Race, name: str, why: str, config_sha: str, resume: str | None, started: float
) -> Fitted:
    """Train the choice in the run dir from the start (or resume it), and record it."""
    final = _config_for(cfg, name, run)
    fitted = fit_run(final, run, config_sha, resume)
    return _record(fitted, race, name, why, final, time.perf_counter() - started)


def saved_race(path: Path, config_sha: str, resume_from: str | None) -> Race | None:
    """The finished race in the run dir when it belongs to this run: raced under this config, or the run being
    resumed (`resume=` continues whatever the run dir holds). None: race (again), also when the leader's race
    checkpoint is gone before it continued (a finished run's candidates were tidied away)."""
    if not path.is_file():
        return None
    race = Race.load(path)
    if not resume_from and race.config_sha != config_sha:
        log.info("strategy=auto: %s was raced under another config; racing again", path)
        return None
    waiting = race.chosen is None and race.final is None and not resume_from
    if waiting and not Path(race.scores[race.leader].checkpoint or "").is_file():
        log.info("strategy=auto: the race leader's checkpoint is gone; racing again")
        return None
    return race


def _race(cfg: DictConfig, run: RunDir) -> Race:
    """The frozen candidates in full, the trainable ones for race_fraction of the epochs; the leader."""
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
    for name in FROZEN:
        job = first if name == "freeze" else None
        race.scores[name] = _fit_candidate(_candidate_config(cfg, name, run), run / FOLDER / name, None, job)
    for name in trainable_candidates(race.train_min_per_class, settings.scratch_min_per_class):
        folder = run / FOLDER / name
        race.scores[name] = _fit_candidate(_candidate_config(cfg, name, run), folder, race.race_epochs)
    racing = {n: s.val_acc for n, s in race.scores.items() if s.stage == "race"}
    race.leader, race.why = pick(racing, race.val_images, settings.tie_se, settings.prior)
    race.seconds = round(time.perf_counter() - started, 3)
    log.info("strategy=auto race: %s continues (%s)", race.leader, race.why)
    return race


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
    """strategy=<name> writing into auto/<name>/; frozen features cached under auto/ unless a cache dir is set."""
    candidate = _config_for(cfg, name, run)
    candidate.paths.output_dir = str(run / FOLDER / name)
    return candidate


def _config_for(cfg: DictConfig, name: str, run: RunDir) -> DictConfig:
    """The config that trains strategy=<name>; the race's frozen features shared through a disk cache."""
    chosen = with_preset(cfg, name, settings_of(cfg))
    if name == "scratch":  # every weight trains from random init: it wants a lower LR than the head of a transfer
        # a race saved before scratch_lr_mult existed raced scratch at optim.lr: it continues there
        mult = (cfg.strategy.get("auto") or {}).get("scratch_lr_mult", 1.0)
        chosen.optim.lr = float(chosen.optim.lr) * float(mult)
    if not chosen.data.feature_cache_dir:
        chosen.data.feature_cache_dir = str(run / FOLDER / "feature_cache")
    return chosen


def _fit_candidate(cfg: DictConfig, folder: Path, stop_epoch: int | None, job: TransferJob | None = None) -> Score:
    """Fit one candidate in its folder (CSV metrics, checkpoints), no test; a racing one stops after stop_epoch
    epochs and saves where it stopped."""
    from lightning.pytorch.loggers import CSVLogger

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
    result = fit(trainer, job)
    checkpoint = None
    if stop_epoch:
        checkpoint = str(folder / "checkpoints" / "race.ckpt")
        trainer.save_checkpoint(checkpoint)
    stage = "race" if stop_epoch else "full"
    val_acc, seconds = round(result.metrics["val/acc"], 6), round(result.train_seconds, 3)
    return Score(val_acc, trainer.current_epoch, seconds, stage, checkpoint)


def continue_checkpoint(run: RunDir, name: str, race_checkpoint: str) -> str:
    """The leader's race checkpoint made the run dir's own: the checkpoint callbacks' saved paths moved from
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


def _set_aside(run: RunDir, name: str) -> None:
    """Move a continued run's files out of the run dir, to auto/<name>/continued/, before the winner trains there."""
    target = run / FOLDER / name / "continued"
    target.mkdir(parents=True, exist_ok=True)
    for item in MOVED_ASIDE:
        if (run / item).exists():
            shutil.move(str(run / item), str(target / item))


def tidy(run: RunDir) -> None:
    """After the final run: drop the candidates' checkpoints and the race's own feature cache (their metrics.csv,
    race.json and the choice in summary.json stay)."""
    folder = run / FOLDER
    for checkpoint in folder.rglob("*.ckpt"):
        checkpoint.unlink()
    shutil.rmtree(folder / "feature_cache", ignore_errors=True)


def _record(fitted: Fitted, race: Race, chosen: str, why: str, final: DictConfig, seconds: float) -> Fitted:
    """strategy_auto in summary.json (with the LR the chosen strategy trained at: summary.json's `lr` stays the
    command's optim.lr, which a sweep groups by), and the one log line."""
    settings = final.strategy.auto
    block = OmegaConf.to_container(preset(chosen), resolve=True)  # eval/predict/export rebuild the network from it
    scores = {name: asdict(score) for name, score in race.scores.items()}
    for score in scores.values():
        score.pop("checkpoint", None)
    fitted.job.auto = {
        "method": "race",
        "chosen": chosen,
        "why": why,
        "candidates": scores,
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
    listed = ", ".join(f"{n} {s['val_acc']:.3f} ({s['stage']}, {s['epochs']} ep)" for n, s in scores.items())
    log.info("strategy=auto chose %s by race: %s [val acc: %s; race %.1f s]", chosen, why, listed, race.seconds)
    return fitted

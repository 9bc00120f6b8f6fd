"""What a sweep will cost, estimated before it starts: the cost part of `--dry-run` (`describe_cost`).

1. Feasibility: `SAMPLES` configurations drawn through `SearchSpace.sample`, the path the searcher uses,
   with Optuna's RandomSampler seeded with `search.seed`. The share that breaks a constraint is rejected
   before launch and drawn again, so the cost is priced on the feasible ones only. A space none of whose
   samples is feasible is refused (`require_feasible`, which the real run calls too): its search could only
   reject samples until it gave up.
2. Epochs: under ASHA all trials run to the first rung and 1/reduction_factor of them pass each rung
   (`estimate_epochs`); an epoch budget stops the sweep sooner.
3. Compute per trial-epoch: the training images at `TRAIN_MACS_PER_FORWARD` times the forward MACs
   (forward, then backward for activations and for weights), plus the validation images at the forward
   MACs (twice with flip TTA); the mean over the feasible samples.
4. Time: at the calibrated training throughput below. A trial holding a fraction g of a GPU is priced at
   g times it, so GPU-hours do not depend on g (packing trials measured better than that,
   docs/benchmarks.md#gpu-h200, so this errs long). Wall clock with min(max_concurrent, trials, what the
   resources allow) trials at once.
5. The final fit (a `final:` section): final.epochs epochs of the same mean configuration on its images
   (training and validation images with train_on all), at one trial's rate, after the search.
Not counted: starting Ray, loading the data, the first epoch's warm-up and checkpoint I/O
(docs/benchmarks.md#sweep-overhead).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.architecture import count_macs, count_params
from tuner.errors import UserError

if TYPE_CHECKING:
    from tuner.config import TrainConfig
    from tuner.space import SearchSpace

# Training throughput, calibrated from the results page; when those figures change, change these.
# GPU (docs/benchmarks.md#trainer-speed, GPU, and #gpu-h200): the default network (421 M MACs per image)
# trains at about 32,700 images/s on an H200 in bf16 (precision auto): 3 x 421e6 x 32,700 = about 41 T MAC/s.
GPU_MACS_PER_S = 41e12
GPU_CALIBRATION = "the default network training on an H200, docs/benchmarks.md#gpu-h200"
# CPU (docs/benchmarks.md#trainer-speed, CPU): widths 32/64/128 (106 M MACs per image) at about 487
# images/s on 2 cores in bf16: 3 x 106e6 x 487 / 2 = about 77 G MAC/s per core.
CPU_MACS_PER_S_PER_CORE = 77e9
CPU_CALIBRATION = "widths 32/64/128 training on 2 EPYC cores, docs/benchmarks.md#trainer-speed"
TRAIN_MACS_PER_FORWARD = 3
CIFAR_TRAIN_IMAGES = 50_000
# Enough for the feasible share to within a few points (standard error 1.6 points at 50%), few enough that
# the whole dry run takes about half a second.
SAMPLES = 1_000


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: 45s, 4m 30s, 10m, 3h 40m, 2d 5h (each rounded to its last unit)."""
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{round(seconds)}s"
    if seconds < 599.5:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m" + (f" {rest}s" if rest else "")
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        hours, minutes = divmod(minutes, 60)
        return " ".join(part for part in (f"{hours}h" if hours else "", f"{minutes}m" if minutes else "") if part)
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days}d" + (f" {hours}h" if hours else "")


def asha_rungs(space: SearchSpace) -> list[tuple[int, float]]:
    """(epoch, expected trials that run to it): all trials to the first rung, 1/reduction_factor of those
    on past each rung, the last group to max_epochs. Without ASHA every trial runs every epoch."""
    sched, trials = space.scheduler, float(space.budget.trials)
    if sched.type != "asha":
        return [(sched.max_epochs, trials)]
    reached, alive = [], trials
    for rung in sched.rungs():
        reached.append((rung, alive))
        alive /= sched.reduction_factor
    return [*reached, (sched.max_epochs, alive)]


def estimate_epochs(space: SearchSpace) -> float:
    """Expected total epochs: under ASHA a fraction 1/rf of the trials passes each rung; an epoch budget
    stops the sweep sooner."""
    total, previous = 0.0, 0
    for epoch, trials in asha_rungs(space):
        total += trials * (epoch - previous)
        previous = epoch
    return min(total, float(space.budget.epochs)) if space.budget.epochs else total


class _RandomTrial:
    """A SuggestingTrial drawing each value from Optuna's RandomSampler, with the distributions Optuna's
    own trial builds. Not a study's trial: a study's bookkeeping costs about 0.4 ms a sample, most of a
    dry run's time; the sampler alone costs a fraction of that."""

    def __init__(self, seed: int) -> None:
        import optuna

        self._sampler = optuna.samplers.RandomSampler(seed=seed)
        self._distributions = optuna.distributions
        self._cache: dict[tuple, Any] = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        key = ("float", name, low, high, step, log)
        if key not in self._cache:
            self._cache[key] = self._distributions.FloatDistribution(low, high, step=step, log=log)
        return float(self._draw(name, self._cache[key]))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        key = ("int", name, low, high, step, log)
        if key not in self._cache:
            self._cache[key] = self._distributions.IntDistribution(low, high, step=step, log=log)
        return int(self._draw(name, self._cache[key]))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        key = ("categorical", name, tuple(choices))
        if key not in self._cache:
            self._cache[key] = self._distributions.CategoricalDistribution(choices)
        return self._draw(name, self._cache[key])

    def _draw(self, name: str, distribution: Any) -> Any:
        # RandomSampler.sample_independent reads neither the study nor the trial.
        return self._sampler.sample_independent(None, None, name, distribution)  # type: ignore[arg-type]


def _draws(space: SearchSpace, samples: int) -> Iterator[TrainConfig]:
    """`samples` configurations as the searcher draws them, at random (seeded with search.seed), one at a time."""
    trial = _RandomTrial(space.search.seed)
    for _ in range(samples):
        try:
            config = space.sample(trial)
        except UserError as err:  # a combination the per-parameter checks cannot see
            raise UserError(f"{space.path}: a sampled configuration is invalid, so a real sweep would fail on it: "
                            f"{str(err).splitlines()[0]}") from None
        yield config


def sample_configs(space: SearchSpace, samples: int = SAMPLES) -> list[TrainConfig]:
    """`samples` configurations as the searcher draws them, at random (seeded with search.seed)."""
    return list(_draws(space, samples))


def require_feasible(space: SearchSpace, samples: int = SAMPLES) -> None:
    """Refuse a space whose constraints break every one of the draws the dry run prices (the same draws, so
    the dry run and the real run agree). Its sweep would record one `infeasible` run per sample until the
    searcher gives up after searcher.MAX_REJECTIONS in a row, having trained nothing. Stops at the first
    feasible draw: a space with any real feasible share costs a few samples."""
    c = space.constraints
    if not (c.max_params or c.max_macs):
        return
    drawn = []
    for config in _draws(space, samples):
        if c.violation(config) is None:
            return
        drawn.append(config)
    raise UserError(infeasible_message(space, drawn))


def infeasible_message(space: SearchSpace, drawn: list[TrainConfig]) -> str:
    """Why no sample of `drawn` (all infeasible) fits: each constraint with how many samples break it and the
    smallest value the space reaches, and the fix."""
    c, small = space.constraints, space.corner_configs()[0]
    broken, names = [], []
    for name, limit, count, unit in (("max_params", c.max_params, count_params, "params"),
                                     ("max_macs", c.max_macs, count_macs, "MACs")):
        if not limit:
            continue
        values = [count(x) for x in drawn]
        over = sum(v > limit for v in values)
        if over:
            names.append(name)
            # The smallest network of the space (corner_configs) tells whether anything fits at all, the smallest
            # sample how far the limit is from what the search actually draws
            broken.append(f"{name} {limit:,} breaks {over:,} (the smallest sample has {min(values):,} {unit}, the "
                          f"smallest network in the space {min(count(small), *values):,})")
    return (f"{space.path}: none of {len(drawn):,} random samples meets the constraints: {'; '.join(broken)}; the "
            f"search would reject every sample and give up, having trained nothing: raise {' or '.join(names)} or "
            "narrow the ranges toward smaller networks")


@dataclass(frozen=True)
class Estimate:
    """The dry run's figures; every time is in seconds."""

    samples: int
    broken: dict[str, int]  # constraint -> samples that break it
    rejected: int  # samples that break any constraint
    epochs: float  # expected epochs over all trials
    train_images: int
    val_images: int
    forward_macs: float  # mean forward MACs per image of the feasible samples
    epoch_macs: float  # mean MACs of one trial-epoch (training and validation)
    trial_rate: float  # MAC/s of one trial on its share of the resources
    device_seconds: float  # GPU-seconds (GPU trials) or CPU-core-seconds (CPU trials), whole sweep
    longest_trial_s: float  # one trial that runs every epoch; 0 when the epoch budget stops the sweep first
    final_images: int = 0  # images the final fit trains on (0: no final fit)
    final_seconds: float = 0.0  # wall clock of the final fit, at one trial's rate
    final_device_seconds: float = 0.0  # its GPU-seconds (or CPU-core-seconds), as device_seconds

    def wall_seconds(self, slots: int) -> float:
        """With `slots` trials at once: the trial-time spread over the slots, but never less than one trial
        that runs every epoch."""
        trial_seconds = self.epochs * self.epoch_macs / self.trial_rate
        return max(trial_seconds / max(slots, 1), self.longest_trial_s)


def estimate_cost(space: SearchSpace, samples: int = SAMPLES) -> Estimate:
    configs = sample_configs(space, samples)
    c = space.constraints
    broken = {"max_params": sum(count_params(x) > c.max_params for x in configs) if c.max_params else 0,
              "max_macs": sum(count_macs(x) > c.max_macs for x in configs) if c.max_macs else 0}
    feasible = [x for x in configs if c.violation(x) is None]
    train_images = min(space.data.subset or CIFAR_TRAIN_IMAGES, CIFAR_TRAIN_IMAGES - space.data.val_size)
    val_images = space.data.val_size
    per_image = [count_macs(x) for x in feasible] or [0]
    epoch_macs = [macs * (train_images * TRAIN_MACS_PER_FORWARD + val_images * (2 if x.tta_flip else 1))
                  for x, macs in zip(feasible, per_image)] or [0.0]
    mean_epoch = sum(epoch_macs) / len(epoch_macs)
    res = space.resources
    rate = GPU_MACS_PER_S * res.gpus if res.gpus else CPU_MACS_PER_S_PER_CORE * res.cpus
    full_rate = GPU_MACS_PER_S if res.gpus else CPU_MACS_PER_S_PER_CORE
    epochs = estimate_epochs(space)
    stopped_early = bool(space.budget.epochs) and epochs == space.budget.epochs
    final_images, final_macs = 0, 0.0
    if space.final is not None:
        # The champion is not known before the search: priced as the mean feasible configuration, like a trial
        final_images, evaluated = space.final.images(train_images, val_images)
        final_macs = space.final_epochs * sum(
            macs * (final_images * TRAIN_MACS_PER_FORWARD + evaluated * (2 if x.tta_flip else 1))
            for x, macs in zip(feasible, per_image)) / max(len(feasible), 1)
    return Estimate(
        samples=len(configs), broken=broken, rejected=len(configs) - len(feasible), epochs=epochs,
        train_images=train_images, val_images=val_images, forward_macs=sum(per_image) / len(per_image),
        epoch_macs=mean_epoch, trial_rate=rate, device_seconds=epochs * mean_epoch / full_rate,
        longest_trial_s=0.0 if stopped_early else space.scheduler.max_epochs * mean_epoch / rate,
        final_images=final_images, final_seconds=final_macs / rate, final_device_seconds=final_macs / full_rate,
    )


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) of this machine, without torch: the CPUs this process may use, and the NVIDIA GPUs
    CUDA_VISIBLE_DEVICES allows (else those the driver lists)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    else:
        driver = Path("/proc/driver/nvidia/gpus")
        gpus = len(list(driver.iterdir())) if driver.is_dir() else 0
    return cpus, gpus


def trials_that_fit(space: SearchSpace, cpus: float, gpus: float) -> int:
    """How many trials of the space run at once on `cpus` and `gpus`, at most max_concurrent and trials."""
    res = space.resources
    limits = [space.search.max_concurrent, space.budget.trials]
    if math.isfinite(cpus):
        limits.append(math.floor(cpus / res.cpus + 1e-9))
    if res.gpus and math.isfinite(gpus):
        limits.append(math.floor(gpus / res.gpus + 1e-9))
    return max(0, min(limits))


def describe_cost(space: SearchSpace, samples: int = SAMPLES) -> list[str]:
    """The dry run's cost lines: feasible share, epochs, compute per trial-epoch, the assumed throughput,
    device-hours against the budget, and wall clock at max_concurrent and on this machine."""
    require_feasible(space, samples)  # a sweep that can only reject has no cost to estimate: refused
    est = estimate_cost(space, samples)
    res, budget = space.resources, space.budget
    lines = ["cost estimate (training and validation only; Ray start-up, data loading and checkpoints not counted):"]
    if space.constraints.max_params or space.constraints.max_macs:
        lines.append(f"  feasible: about {1 - est.rejected / est.samples:.0%} of {est.samples:,} random samples"
                     + (f"; {_rejected(space, est)}: they are rejected before launch"
                        if est.rejected else "; none breaks the constraints"))
        feasible = est.samples - est.rejected
        if feasible < est.samples / 100:  # none is refused above; this few, most trials start after ~100 rejections
            lines.append(f"  warning: only {feasible:,} of {est.samples:,} samples {'is' if feasible == 1 else 'are'} "
                         f"feasible: each trial is drawn after about {est.samples // feasible:,} rejected samples "
                         "(each an infeasible run), and a long enough run of them makes the search give up; loosen "
                         "the constraints or narrow the ranges")
    if budget.epochs and est.epochs == budget.epochs:
        how = "the epoch budget stops the sweep"
    elif space.scheduler.type == "asha":
        rungs = asha_rungs(space)
        how = "ASHA: " + ", ".join(f"{trials:.3g}{' trials' if i == 0 else ''} to epoch {epoch}"
                                   for i, (epoch, trials) in enumerate(rungs))
    else:
        how = "no early stopping: every trial runs every epoch"
    lines.append(f"  epochs: about {est.epochs:,.0f} in all ({how})")
    tta = " x 2 for flip TTA" if space.fixed.get("tta_flip", True) else ""
    lines.append(f"  per trial-epoch: {est.epoch_macs / 1e12:.3g} T MACs ({est.train_images:,} training images x "
                 f"{TRAIN_MACS_PER_FORWARD} + {est.val_images:,} validation images{tta},")
    constrained = space.constraints.max_params or space.constraints.max_macs
    lines.append(f"    at {_giga(est.forward_macs)} MACs per image, the mean of the {'feasible ' * bool(constrained)}"
                 "samples)")
    epoch = _about(est.epoch_macs / est.trial_rate)
    slots = trials_that_fit(space, math.inf, math.inf)
    if res.gpus:
        lines.append(f"  throughput assumed: {GPU_MACS_PER_S / 1e12:.0f} T MAC/s per GPU ({GPU_CALIBRATION});")
        lines.append(f"    with {res.gpus:g} GPU a trial-epoch takes about {epoch} (packed trials measured faster: "
                     "this errs long)")
        hours = est.device_seconds / 3600
        against = ""
        if budget.gpu_hours:
            against = (f"; the GPU budget ({budget.gpu_hours:g} GPU-hours) stops the sweep first"
                       if hours > budget.gpu_hours else f", within the GPU budget of {budget.gpu_hours:g} GPU-hours")
        lines.append(f"  GPU time: about {hours:.2g} GPU-hours ({_about(est.device_seconds)} of one GPU){against}")
        needs = f"needs {slots * res.gpus:g} GPUs and {slots * res.cpus:g} CPUs"
    else:
        lines.append(f"  throughput assumed: {CPU_MACS_PER_S_PER_CORE / 1e9:.0f} G MAC/s per CPU core "
                     f"({CPU_CALIBRATION});")
        lines.append(f"    with {res.cpus:g} CPU{'s' if res.cpus != 1 else ''} a trial-epoch takes about {epoch}")
        lines.append(f"  no GPU requested: 0 GPU-hours, about {_about(est.device_seconds)} of CPU-core time")
        needs = f"needs {slots * res.cpus:g} CPUs"
    lines.append(f"  wall clock: about {_cap(space, est, slots)} with {slots} trial{'s' if slots != 1 else ''} at "
                 f"once (max_concurrent {space.search.max_concurrent}; {needs})")
    if space.final is not None:
        spent = (f"{est.final_device_seconds / 3600:.2g} GPU-hours" if res.gpus
                 else f"{_about(est.final_device_seconds)} of CPU-core time")
        lines.append(f"  final fit, after the search: {space.final_epochs} epochs on {est.final_images:,} images, "
                     f"about {_about(est.final_seconds)} more wall clock ({spent}; not capped by the budget)")
    cpus, gpus = local_resources()
    here = trials_that_fit(space, cpus, gpus)
    machine = f"this machine ({cpus} CPU{'s' if cpus != 1 else ''}, {gpus or 'no'} GPU{'s' if gpus > 1 else ''})"
    if here == 0:
        lines.append(f"  {machine} cannot run a trial of it (each needs {res.cpus:g} CPUs"
                     + (f" and {res.gpus:g} GPU" if res.gpus else "") + "): run it on a cluster with --address")
    elif here < slots:
        lines.append(f"  on {machine}: {here} at once, about {_cap(space, est, here)}")
    return lines


def _rejected(space: SearchSpace, est: Estimate) -> str:
    """'53% break max_params 5,000,000' or, with both constraints, each one's share too."""
    broken = [(name, n) for name, n in est.broken.items() if n]
    limits = " or ".join(f"{name} {getattr(space.constraints, name):,}" + (f" ({n / est.samples:.0%})"
                                                                          if len(broken) > 1 else "")
                         for name, n in broken)
    return f"{est.rejected / est.samples:.0%} break {limits}"


def _about(seconds: float) -> str:
    """A duration for an estimate: whole minutes from a minute up, so no false precision."""
    return format_duration(seconds if seconds < 60 else round(seconds / 60) * 60)


def _cap(space: SearchSpace, est: Estimate, slots: int) -> str:
    """Wall clock at `slots` trials at once, stopped by the GPU or the wall-time budget where they bind."""
    seconds = est.wall_seconds(slots)
    budget, why = space.budget, ""
    if budget.gpu_hours and space.resources.gpus and est.device_seconds > budget.gpu_hours * 3600:
        seconds *= budget.gpu_hours * 3600 / est.device_seconds
        why = " (stopped by the GPU budget)"
    if budget.wall_time_s and seconds > budget.wall_time_s:
        seconds, why = budget.wall_time_s, " (stopped by the wall-time budget)"
    return _about(seconds) + why


def _giga(macs: float) -> str:
    return f"{macs / 1e9:.3g} G" if macs >= 1e8 else f"{macs / 1e6:.3g} M"

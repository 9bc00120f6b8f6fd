"""Optuna TPE as a Ray Tune searcher, with constraints at sampling time and honest multi-fidelity bookkeeping.

The sampler is Optuna's TPE as Optuna 5 ships it (independent random start-up draws, then one joint density over
the parameters every trial has, running trials counted as bad: multivariate with a constant liar, its own
good/bad split); what the searcher adds to the stock `OptunaSearch` is bookkeeping:
- Constraints. A sampled configuration whose analytic params/MACs break `constraints` is told to Optuna
  as PRUNED before its first epoch (user attribute `infeasible`) and sampled again, inside `suggest`: it
  never becomes a Ray trial.
- Pruning. Stock OptunaSearch tells a trial that ASHA stopped at epoch 3 as COMPLETE with its epoch-3
  accuracy, so TPE compares a 3-epoch score with 15-epoch scores. Here such a trial is told as PRUNED (its
  per-epoch values are already reported as intermediate values), and only trials that ran every epoch are
  COMPLETE. A diverged trial is FAIL with user attribute `diverged`.
Sampler variants (a Latin-hypercube start, a rung-fitted TPE, group-decomposed TPE, no constant liar) were
measured against stock at equal budgets and did not earn their lines (docs/benchmarks.md#search-efficiency).
A conditional parameter is drawn in every trial (tuner.space, SearchSpace.sample) so that it stays in the joint
density.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.outcomes import ABANDONED, RESUMED_EPOCHS
from tuner.space import SearchSpace
from tuner.sweep_state import SweepState

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial drowns the sweep's progress
MAX_REJECTIONS = 1000
EPOCH = "epoch"
WARM_START_FROM = "warm_start_from"  # user attribute of a trial copied from an earlier sweep (`warm_start`)


def create_study(space: SearchSpace, storage_url: str | None, study_name: str) -> optuna.Study:
    """The sweep's Optuna study (persisted when storage_url is a database URL)."""
    if space.search.algorithm == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=space.search.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=space.search.seed, n_startup_trials=space.search.startup_trials)
    direction = "maximize" if space.mode == "max" else "minimize"
    return optuna.create_study(storage=storage_url, study_name=study_name, sampler=sampler, direction=direction,
                               load_if_exists=True)


def own_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that this sweep drew, without those `warm_start` copied from an earlier sweep: the
    copies are another sweep's draws and runs, so no count of this sweep's samples or finished trials holds them."""
    return [t for t in study.get_trials(deepcopy=False) if WARM_START_FROM not in t.user_attrs]


# Sweeps started before 2026-12 pickled their sampler under these names (a TPE whose start-up trials came from a
# Latin hypercube); --resume unpickles them as Optuna's TPE, whose remaining start-up trials are drawn at random.
LatinStartTPESampler = RungTPESampler = optuna.samplers.TPESampler
LatinHypercubeStart = optuna.samplers.RandomSampler


class SpaceSearcher(Searcher):
    """Ray Tune's searcher over a SearchSpace and the sweep's Optuna study. The trial config is {"train":
    TrainConfig fields, "index": n, "rejected": r}: n counts every sample drawn, r the infeasible ones among
    them so far. A plain `Searcher` rather than Ray's `OptunaSearch`: it asks, tells and saves itself, so
    no private attribute of OptunaSearch is relied on."""

    def __init__(self, space: SearchSpace, study: optuna.Study,
                 on_rejected: Callable[[int, TrainConfig, str], None] | None = None,
                 state: SweepState | None = None) -> None:
        """`study` is the sweep's study (`create_study`), opened once by the driver, which shares it through
        this searcher (`study`). on_rejected(index, config, reason) records an infeasible sample; it must
        pickle (Ray pickles the searcher with the Tuner for --resume). With `state` (the sweep's state under
        --storage, whose working copy holds the study), the searcher pickles without the study: what it
        saves names the sweep, and a resumed driver reopens the study from its own working copy."""
        super().__init__(metric=space.metric, mode=space.mode)
        self._space_spec = space
        self._ot_study: optuna.Study | None = study
        self._state = state
        self._ot_study_name = study.study_name
        self._ot_sampler = study.sampler
        self._max_epochs = space.scheduler.max_epochs
        self._on_rejected = on_rejected
        # Ray trial id -> its Optuna trial (its id in the study while pickled); the names are those of the
        # OptunaSearch this class once extended, so that searchers saved by older sweeps restore
        self._ot_trials: dict[str, optuna.Trial | int] = {}
        self._completed_trials: set[str] = set()
        self._configs: dict[str, dict[str, Any]] = {}
        self.suggested = 0
        self.rejected = 0

    @property
    def study(self) -> optuna.Study:
        """The sweep's study; after --resume, reopened from this driver's working copy."""
        if self._ot_study is None:
            assert self._state is not None
            self._ot_study = optuna.load_study(study_name=self._ot_study_name, storage=self._state.study_url,
                                               sampler=self._ot_sampler)
        if any(not isinstance(t, optuna.Trial) for t in self._ot_trials.values()):
            self._ot_trials = {trial_id: optuna.Trial(self._ot_study, t if isinstance(t, int) else trial_key(t))
                               for trial_id, t in self._ot_trials.items()}
        return self._ot_study

    def _portable(self) -> dict[str, Any]:
        """This searcher's state without the study's connection: the trials as their ids in the study."""
        state = dict(self.__dict__)
        if self._state is not None:
            state["_ot_study"] = None
            state["_ot_trials"] = {trial_id: t if isinstance(t, int) else trial_key(t)
                                   for trial_id, t in self._ot_trials.items()}
        return state

    def __getstate__(self) -> dict[str, Any]:
        return self._portable()

    def save(self, checkpoint_path: str) -> None:
        """Ray's periodic snapshot of the search, which --resume loads into the searcher it unpickles with
        the Tuner. The study goes to --storage first, so that it is never older than this snapshot.
        `on_rejected` stays out: it belongs to the driver's bookkeeping, which was unpickled with the Tuner
        too and must stay the one object the rest of the driver writes through."""
        if self._state is not None:
            self._state.upload_study()
        state = {key: value for key, value in self._portable().items() if key != "_on_rejected"}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's snapshot (`save`) into this searcher, on --resume. sweep_state.verify_ray_state has checked the
        file against the driver's own digest before Ray gets here."""
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        self._count_from_study = True  # the snapshot's counts may miss samples drawn after it (_catch_up_counts)

    def _catch_up_counts(self) -> None:
        """After a restore, count the samples this sweep drew from the study, the authority: a driver killed
        after Ray's snapshot had drawn more than the snapshot's counts say, and the next label would repeat
        one a trial already has (two t003 runs). Warm-started copies are another sweep's draws."""
        if not self.__dict__.pop("_count_from_study", False):
            return
        own = own_trials(self.study)
        self.suggested = max(self.suggested, sum(1 for t in own if "ray_trial_id" in t.user_attrs))
        self.rejected = max(self.rejected, sum(1 for t in own if "infeasible" in t.user_attrs))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self.study  # noqa: B018 - binds the study (a resumed driver's working copy)
        if trial_id in self._ot_trials:  # Ray may ask again for a trial it already has (restore)
            return self._configs[trial_id]
        self._catch_up_counts()
        for _ in range(MAX_REJECTIONS):
            ot_trial = self._ot_study.ask()
            config = self._space_spec.sample(ot_trial)
            reason = self._space_spec.constraints.violation(config)
            if reason is None:
                self.suggested += 1
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                # t007: the trial's name in the console, MLflow (run name) and its folder under --storage
                ot_trial.set_user_attr("trial_label", f"t{self.suggested + self.rejected:03d}")
                self._ot_trials[trial_id] = ot_trial
                result = {"train": config.to_dict(), "index": self.suggested + self.rejected,
                          "rejected": self.rejected}
                self._configs[trial_id] = result
                if self._state is not None:
                    # Stored before Ray launches the trial: a driver killed before its next upload would leave
                    # a trial that ran (an MLflow run, result files) unknown to the study a resumed driver reads,
                    # and no driver would ever end it.
                    self._state.upload_study()
                return result
            self.rejected += 1
            ot_trial.set_user_attr("infeasible", reason)
            # PRUNED with no intermediate value ranks below every trial that ran, so TPE learns to avoid the
            # region; FAIL would be ignored by TPE, which then proposes the same infeasible region again.
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            logger.info("rejected infeasible config before launch: %s", reason)
            if self._on_rejected is not None:
                self._on_rejected(self.suggested + self.rejected, config, reason)
        # A UserError, not a bug: the space's constraints leave (almost) nothing to sample. The driver ends the
        # sweep FAILED with what it recorded so far, and prints this one line.
        c = self._space_spec.constraints
        names = " or ".join(name for name, value in (("max_params", c.max_params), ("max_macs", c.max_macs)) if value)
        raise UserError(f"{self._space_spec.path}: {MAX_REJECTIONS:,} samples in a row broke the constraints (the "
                        f"last: {reason}), so the search gave up: raise {names} or narrow the ranges toward smaller "
                        "networks, then start a new sweep (--dry-run shows the feasible share)")

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The trial as the study holds it. After --resume, Ray's older snapshot of this searcher may not
        know what the (synchronously written) study already recorded, so the study is the authority."""
        return stored_trial(self.study, self._ot_trials[trial_id].number)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.study  # noqa: B018 - binds the study
        if trial_id not in self._ot_trials or trial_id in self._completed_trials or self.metric not in result:
            return
        stored = self._stored(trial_id)
        if stored.state.is_finished():
            self._completed_trials.add(trial_id)
            return
        report_new_epochs(self._ot_trials[trial_id], stored, result, self.metric)

    def finished_in_study(self, trial_id: str) -> bool:
        """Whether the study holds Ray trial `trial_id` as finished (told by this driver or an earlier one)."""
        self.study  # noqa: B018 - binds the study
        return trial_id in self._ot_trials and self._stored(trial_id).state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.study  # noqa: B018 - binds the study
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if self.finished_in_study(trial_id):
            self._completed_trials.add(trial_id)
            return
        tell_finished(self._ot_study, self._ot_trials[trial_id], result, self.metric, self._max_epochs, error)
        self._completed_trials.add(trial_id)


def trial_key(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in the study's storage, which `optuna.Trial(study, key)` takes to act on a trial again (after
    --resume, or for a trial the driver ends). Optuna has no public way from a trial number to an
    `optuna.Trial`: `_trial_id` is the one private attribute of Optuna the searcher reads;
    tests/test_searcher.py::test_the_optuna_internal_the_searcher_reads_still_exists pins it."""
    return trial._trial_id


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A trial the study holds, as an `optuna.Trial` that can report, set attributes and be told."""
    return optuna.Trial(study, trial_key(frozen))


def stored_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` as the study holds it now (a study's trials are numbered 0, 1, ... in the order listed)."""
    return study.get_trials(deepcopy=False)[number]


def report_new_epochs(ot_trial: optuna.Trial, stored: optuna.trial.FrozenTrial, result: dict, metric: str) -> None:
    """Report to the study the epochs of `result` it has not heard (`stored` is the trial as the study holds it):
    the checkpoint's epochs a restarted trial carries (outcomes.RESUMED_EPOCHS), then the result's own. A resumed
    trial may repeat an epoch; the first value stays."""
    rows = [r for r in result.get(RESUMED_EPOCHS) or [] if isinstance(r, dict) and metric in r and EPOCH in r]
    heard = set(stored.intermediate_values)
    for row in [*rows, result]:
        epoch = int(row[EPOCH])
        if epoch not in heard:
            ot_trial.report(row[metric], epoch)
            heard.add(epoch)


def tell_finished(study: optuna.Study, ot_trial: optuna.Trial, result: dict | None, metric: str, max_epochs: int,
                  error: bool = False) -> None:
    """Tell the study how a trial ended: COMPLETE only after max_epochs, PRUNED when stopped earlier, FAIL
    when it errored or diverged."""
    if result and metric in result and not result.get("diverged") and EPOCH in result:
        # Ray does not always pass a trial's last result (the one ASHA stops it on, say) through
        # on_trial_result first: make sure it is recorded as that epoch's intermediate value.
        report_new_epochs(ot_trial, stored_trial(study, ot_trial.number), result, metric)
    if error:
        study.tell(ot_trial, state=TrialState.FAIL)
    elif result and result.get("diverged"):
        ot_trial.set_user_attr("diverged", True)
        study.tell(ot_trial, state=TrialState.FAIL)
    elif result and int(result.get(EPOCH, 0)) >= max_epochs and metric in result:
        study.tell(ot_trial, result[metric], state=TrialState.COMPLETE)
    else:
        ot_trial.set_user_attr("stopped_at_epoch", int(result.get(EPOCH, 0)) if result else 0)
        # PRUNED takes the last intermediate value as the trial's value.
        study.tell(ot_trial, state=TrialState.PRUNED)


def tell_stopped(study: optuna.Study, stopped: list[tuple[optuna.trial.FrozenTrial, dict]], metric: str,
                 max_epochs: int) -> None:
    """Tell the study how running trials that Ray ended without telling the searcher (the sweep's budget ran
    out) ended, each from its last result."""
    for frozen, result in stopped:
        tell_finished(study, live_trial(study, frozen), result, metric, max_epochs)


def finished_results(study: optuna.Study, metric: str) -> dict[str, dict[str, Any]]:
    """{Ray trial id: {epoch, metric}}: the last epoch the study heard of each trial it holds finished. A driver
    tells the study a trial's outcome before it notes it in ended.json (sweep_state.ENDED_TRIALS), so a driver
    killed between the two leaves trials only the study knows have ended; a resumed driver hands these to the
    workers with ended.json's (TrialSettings.ended), and a trial Ray restarts ends again without training.
    Trials the driver abandoned (no outcome) are left out: a resumed sweep trains them on."""
    ended = {}
    for trial in study.get_trials(deepcopy=False):
        ray_id = trial.user_attrs.get("ray_trial_id")
        if ray_id and trial.state.is_finished() and trial.intermediate_values and not trial.user_attrs.get(ABANDONED):
            epoch = max(trial.intermediate_values)
            ended[ray_id] = {EPOCH: epoch, metric: trial.intermediate_values[epoch]}
    return ended


def fail_trials(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], why: str) -> None:
    """FAIL, with user attribute `why`, for trials no driver will finish: TPE leaves them out."""
    for frozen in trials:
        live_trial(study, frozen).set_user_attr(why, True)
        study.tell(frozen.number, state=TrialState.FAIL)


def warm_start(study: optuna.Study, previous: optuna.Study, space: SearchSpace) -> tuple[int, int]:
    """Copy finished trials (COMPLETE and PRUNED, with their intermediate values) from an earlier sweep, in this
    space's terms: each parameter this space searches, with this space's distribution; parameters it does not
    search are left out. A trial with a value this space cannot take (outside a range, not a choice, another
    kind) is skipped: Optuna's storage refuses two kinds for one name, and TPE would model a point outside the
    space. Returns (copied, skipped)."""
    distributions = space_distributions(space)
    copied = skipped = 0
    for trial in previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = {name: value for name, value in trial.params.items() if name in distributions}
        if not all(holds(distributions[name], value) for name, value in params.items()):
            skipped += 1
            continue
        study.add_trial(optuna.trial.create_trial(
            state=trial.state, value=trial.value, params=params,
            distributions={name: distributions[name] for name in params},
            user_attrs={**trial.user_attrs, WARM_START_FROM: previous.study_name},
            intermediate_values=trial.intermediate_values,
        ))
        copied += 1
    return copied, skipped


class _DistributionRecorder:
    """A SuggestingTrial that notes each parameter's Optuna distribution instead of sampling it."""

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        self.distributions[name] = FloatDistribution(low, high, step=step, log=log)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.distributions[name] = IntDistribution(low, high, step=step, log=log)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.distributions[name] = CategoricalDistribution(choices)
        return choices[0]


def space_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Every Optuna parameter the space can sample (conditional ones too), by name."""
    recorder = _DistributionRecorder()
    for param in space.parameters:
        param.sample(recorder)
    return recorder.distributions


def holds(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one this distribution samples: a choice, or a point of the range (on its step grid)."""
    if isinstance(distribution, CategoricalDistribution):
        return any(type(value) is type(choice) and value == choice for choice in distribution.choices)
    if not isinstance(distribution, (FloatDistribution, IntDistribution)) or isinstance(value, (bool, str)):
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    if distribution.step is None:
        return True
    steps = (value - distribution.low) / distribution.step
    return abs(steps - round(steps)) <= 1e-8 * max(1.0, abs(steps))

"""The searcher's bookkeeping, driven the way Ray Tune drives it: suggest, results, completion."""
from __future__ import annotations

import math
import pickle
import textwrap
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tuner.searcher import LatinHypercubeStart, RungTPESampler, SpaceSearcher, create_study, warm_start
from tuner.space import load_space
from tuner.train import TrainConfig

SPACE = """
fixed: {blocks: [1, 1]}
parameters:
  widths: {choices: [[4, 8], [8, 16], [32, 64], [48, 96]]}
  lr: {type: float, low: 0.01, high: 0.3, log: true}
search: {seed: 3, startup_trials: 4}
scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
constraints: {max_params: 30000}
"""


@pytest.fixture
def space(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(SPACE))
    return load_space(path)


def test_infeasible_configs_never_become_trials(space) -> None:
    study = create_study(space, None, "s")
    rejected: list[tuple[int, TrainConfig, str]] = []
    searcher = SpaceSearcher(space, study, on_rejected=lambda i, c, r: rejected.append((i, c, r)))
    configs = [searcher.suggest(f"trial_{i}") for i in range(12)]
    for config in configs:
        assert space.constraints.violation(TrainConfig.from_dict(config["train"])) is None
    assert searcher.rejected > 0 and len(rejected) == searcher.rejected
    infeasible = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert len(infeasible) == searcher.rejected
    assert all(t.state == TrialState.PRUNED and not t.intermediate_values for t in infeasible)
    assert all("max_params" in t.user_attrs["infeasible"] for t in infeasible)
    assert {tuple(c["train"]["widths"]) for c in configs} <= {(4, 8), (8, 16)}


def test_tpe_keeps_finding_feasible_configs_after_startup(space) -> None:
    """Infeasible samples must teach TPE: it may not get stuck proposing the infeasible half of the space."""
    study = create_study(space, None, "s")
    searcher = SpaceSearcher(space, study)
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_acc": config["train"]["lr"], "epoch": 4})
        searcher.on_trial_complete(f"t{i}", {"val_acc": config["train"]["lr"], "epoch": 4})
    assert searcher.rejected < 60


def test_asha_stopped_trial_is_pruned_not_complete(space) -> None:
    study = create_study(space, None, "s")
    searcher = SpaceSearcher(space, study)
    for trial_id in ("stopped", "finished", "diverged", "crashed"):
        searcher.suggest(trial_id)
    searcher.on_trial_result("stopped", {"val_acc": 0.2, "epoch": 1})
    searcher.on_trial_complete("stopped", {"val_acc": 0.4, "epoch": 2})
    for epoch in range(1, 4):
        searcher.on_trial_result("finished", {"val_acc": 0.1 * epoch, "epoch": epoch})
    # As in Ray: the last result reaches only on_trial_complete.
    searcher.on_trial_complete("finished", {"val_acc": 0.4, "epoch": 4})
    searcher.on_trial_result("diverged", {"val_acc": 0.1, "epoch": 1})
    searcher.on_trial_complete("diverged", {"val_acc": 0.0, "epoch": 2, "diverged": True})
    searcher.on_trial_complete("crashed", None, error=True)

    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials() if "ray_trial_id" in t.user_attrs}
    stopped = by_id["stopped"]
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.2, 2: 0.4}
    assert stopped.user_attrs["stopped_at_epoch"] == 2
    assert by_id["finished"].state == TrialState.COMPLETE and by_id["finished"].value == pytest.approx(0.4)
    assert set(by_id["finished"].intermediate_values) == {1, 2, 3, 4}
    assert by_id["diverged"].state == TrialState.FAIL and by_id["diverged"].user_attrs["diverged"]
    assert by_id["crashed"].state == TrialState.FAIL


def test_stock_optuna_search_would_have_called_it_complete(space) -> None:
    """The bug we guard against: Ray's OptunaSearch tells an ASHA-stopped trial COMPLETE."""
    from ray.tune.search.optuna import OptunaSearch

    stock = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)},
                         metric="val_acc", mode="max")
    stock.suggest("stopped")
    stock.on_trial_result("stopped", {"val_acc": 0.3, "training_iteration": 1})
    stock.on_trial_complete("stopped", {"val_acc": 0.3, "training_iteration": 1})
    assert stock._ot_study.get_trials()[0].state == TrialState.COMPLETE


def test_searcher_state_pickles_for_resume(space, tmp_path: Path) -> None:
    study = create_study(space, f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    searcher = SpaceSearcher(space, study)
    first = searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = SpaceSearcher(space, create_study(space, f"sqlite:///{tmp_path / 'optuna.db'}", "s"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("a") == first  # a restored trial keeps its config
    restored.on_trial_complete("a", {"val_acc": 0.5, "epoch": 4})
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[-1].state \
        == TrialState.COMPLETE


def test_warm_start_copies_finished_trials(space) -> None:
    old = create_study(space, None, "old")
    searcher = SpaceSearcher(space, old)
    searcher.suggest("x")
    searcher.on_trial_result("x", {"val_acc": 0.3, "epoch": 1})
    searcher.on_trial_complete("x", {"val_acc": 0.3, "epoch": 1})
    new = create_study(space, None, "new")
    assert warm_start(new, old) == 1
    copied = new.get_trials()[0]
    assert copied.state == TrialState.PRUNED and copied.intermediate_values == {1: 0.3}


X = {"x": FloatDistribution(0, 1)}


def _first_trial_ran_unopposed(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """What asynchronous ASHA leaves: the first trial (x=0.05) ran every epoch with nobody to beat; 19 later
    trials, stopped at the epoch-2 rung, show accuracy rising with x, most of them above the first trial's."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.05}, distributions=X,
                                 intermediate_values={e: 0.1 + 0.05 * e for e in range(1, 9)}))
    for i in range(19):
        x = (i + 0.5) / 19
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=X,
                                     intermediate_values={1: x / 2, 2: 0.1 + 0.4 * x}))
    return study


@pytest.mark.parametrize("seed", [0, 1])
def test_rung_tpe_models_good_at_the_epoch_all_trials_reached(seed: int) -> None:
    def high_x_share(sampler: optuna.samplers.BaseSampler) -> float:
        study = _first_trial_ran_unopposed(sampler)
        return sum(study.ask(X).params["x"] > 0.7 for _ in range(20)) / 20

    # Stock TPE keeps the lone COMPLETE trial in its good set and samples around x=0.05 as much as anywhere.
    assert high_x_share(optuna.samplers.TPESampler(seed=seed)) < 0.4
    assert high_x_share(RungTPESampler(epochs=[2, 6, 8], min_trials=4, seed=seed)) > 0.6


def test_rung_tpe_counts_running_trials_past_the_rung_and_leaves_the_study_alone() -> None:
    sampler = RungTPESampler(epochs=[2, 6, 8], min_trials=2, seed=0)
    study = _first_trial_ran_unopposed(sampler)
    running = study.ask(X)
    for epoch in range(1, 7):
        running.report(0.2 + 0.1 * epoch, epoch)
    view = sampler._at_rung(study)
    assert view._epoch == 6  # the first trial and the running one reached epoch 6
    shown = {t.number: t for t in view._get_trials(deepcopy=False)}
    assert shown[running.number].state == TrialState.COMPLETE and shown[running.number].value == pytest.approx(0.8)
    assert shown[1].state == TrialState.PRUNED  # stopped at epoch 2, below the rung
    study.ask(X)
    assert study.trials[running.number].state == TrialState.RUNNING and study.trials[0].value == 0.5


def test_rung_tpe_is_plain_tpe_until_enough_trials_reach_a_rung() -> None:
    sampler = RungTPESampler(epochs=[2, 6, 8], min_trials=30, seed=0)
    study = _first_trial_ran_unopposed(sampler)
    assert sampler._at_rung(study) is study


def test_rung_tpe_pickles_after_sampling() -> None:
    """Ray pickles the searcher, with its study and sampler, for --resume, at any point in a sweep."""
    sampler = RungTPESampler(epochs=[2, 6, 8], min_trials=4, seed=0)
    study = _first_trial_ran_unopposed(sampler)
    study.ask(X)
    restored = pickle.loads(pickle.dumps(sampler))
    assert restored._epochs == [8, 6, 2] and restored._min_trials == 4


# The search-efficiency bench's space (bench/search_efficiency.py); 1004 is its TPE seed for seed 4.
BENCH = {"widths": CategoricalDistribution(["8,16,32", "16,32,64", "24,48,96"]),
         "optimizer": CategoricalDistribution(["sgd", "adamw"]), "lr": FloatDistribution(3e-4, 1.0, log=True)}


@pytest.mark.parametrize("seed", [0, 1, 1004])
def test_startup_trials_try_every_choice_and_every_stretch_of_a_range(seed: int) -> None:
    sampler = RungTPESampler(epochs=[2, 8], min_trials=9, seed=seed, n_startup_trials=9)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    drawn = []
    for _ in range(9):
        trial = study.ask(BENCH)
        drawn.append(trial.params)
        study.tell(trial, state=TrialState.PRUNED)  # start-up lasts while fewer than 9 trials finished
    assert Counter(p["widths"] for p in drawn) == {"8,16,32": 3, "16,32,64": 3, "24,48,96": 3}
    assert sorted(Counter(p["optimizer"] for p in drawn).values()) == [4, 5]
    ninths = sorted(int(9 * math.log(p["lr"] / 3e-4) / math.log(1 / 3e-4)) for p in drawn)
    assert ninths == list(range(9)), "one learning rate in each ninth of the log range"


def test_stock_random_startup_can_leave_a_choice_untried() -> None:
    """Why the design: with independent draws, seed 1004 tries the smallest network 5 times in 9."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1004, n_startup_trials=9))
    widths = Counter(study.ask(BENCH).params["widths"] for _ in range(9))
    assert max(widths.values()) >= 5


@pytest.mark.parametrize("distribution, distinct", [
    (IntDistribution(32, 384, step=32), 12), (IntDistribution(1, 3), 3), (IntDistribution(1, 1000, log=True), None),
    (FloatDistribution(0.0, 0.2, step=0.05), 5), (FloatDistribution(1e-5, 1e-2, log=True), 16),
    (FloatDistribution(0.0, 1.0), 16)])
def test_latin_hypercube_values_lie_in_the_range(distribution, distinct: int | None) -> None:
    study = optuna.create_study(sampler=LatinHypercubeStart(size=16, seed=0))
    values = [study.ask({"p": distribution}).params["p"] for _ in range(16)]
    assert all(distribution._contains(distribution.to_internal_repr(v)) for v in values), values
    if distinct is not None:
        assert len(set(values)) == distinct
    study.ask({"p": distribution})  # beyond the design: a random draw


def test_latin_hypercube_design_is_the_same_after_pickling() -> None:
    """Ray pickles the sampler for --resume: the rest of the design must not change, even with no seed."""
    sampler = LatinHypercubeStart(size=8, seed=None)
    before = [sampler._row("lr", row) for row in range(8)]
    restored = pickle.loads(pickle.dumps(sampler))
    assert [restored._row("lr", row) for row in range(8)] == before
    assert sorted(int(8 * q) for q in before) == list(range(8))

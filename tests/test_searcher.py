"""The searcher's bookkeeping, driven the way Ray Tune drives it: suggest, results, completion."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tuner import searcher as searcher_module
from tuner.bookkeeping import OutcomeRecorder
from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.searcher import SpaceSearcher, create_study, warm_start
from tuner.space import load_space
from tuner.sweep_state import SweepState

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


def test_tpe_learns_to_avoid_the_infeasible_half_of_the_space(space) -> None:
    """Infeasible samples must teach TPE. Told FAIL, they are ignored and TPE gets stuck proposing them (suggest
    raises after MAX_REJECTIONS); told PRUNED, TPE proposes them less and less."""
    study = create_study(space, None, "s")
    searcher = SpaceSearcher(space, study)
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_acc": config["train"]["lr"], "epoch": 4})
        searcher.on_trial_complete(f"t{i}", {"val_acc": config["train"]["lr"], "epoch": 4})
    # Half the widths are infeasible: uniform draws would need about 30 rejections for 30 feasible configs.
    assert searcher.rejected < 18


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


def test_a_restored_searcher_labels_new_trials_after_every_trial_the_study_holds(space, tmp_path: Path) -> None:
    """Ray's snapshot of the searcher is older than the study when the driver was killed after drawing more
    trials: the next trial's label must not repeat one of those (two t003 runs in MLflow)."""
    path = tmp_path / "open.yaml"  # no constraints: no rejected samples, so labels count trials alone
    path.write_text(textwrap.dedent(SPACE).replace("constraints: {max_params: 30000}\n", ""))
    space = load_space(path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = SpaceSearcher(space, create_study(space, url, "s"))
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's last snapshot
    searcher.suggest("b")  # drawn after it; then the driver dies
    restored = SpaceSearcher(space, create_study(space, url, "s"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.suggest("c")
    labels = [t.user_attrs["trial_label"] for t in optuna.load_study(study_name="s", storage=url).trials
              if "trial_label" in t.user_attrs]
    assert len(labels) == len(set(labels)) == 3, labels


def test_a_suggested_trial_is_in_the_stored_study_before_ray_launches_it(space, tmp_path: Path) -> None:
    """A driver killed right after a trial starts: the study a resumed driver downloads still names it, so
    that driver ends it (abandoned, or stopped where it checkpointed) instead of never hearing of it."""
    state = SweepState(str(tmp_path), "s")
    study = create_study(space, state.study_url, "s")
    searcher = SpaceSearcher(space, study, state=state)
    searcher.suggest("first")
    state.upload_study()  # what `save`/`complete` did last
    searcher.suggest("second")  # then the driver dies, before anything else uploads

    resumed = SweepState(str(tmp_path), "s")  # a new driver: another working copy, from storage
    assert resumed.download_study()
    stored = optuna.load_study(study_name="s", storage=resumed.study_url)
    assert [t.user_attrs.get("ray_trial_id") for t in stored.trials if "ray_trial_id" in t.user_attrs] == [
        "first", "second"]
    assert all(t.state == TrialState.RUNNING for t in stored.trials if "ray_trial_id" in t.user_attrs)


def test_a_restarted_trial_tells_the_study_the_epochs_its_checkpoint_held(space) -> None:
    study = create_study(space, None, "s")
    searcher = SpaceSearcher(space, study)
    searcher.suggest("t")
    searcher.on_trial_result("t", {"epoch": 1, "val_acc": 0.1})
    history = [{"epoch": epoch, "val_acc": 0.1 * epoch} for epoch in (1, 2, 3)]
    searcher.on_trial_result("t", {"epoch": 4, "val_acc": 0.4, "resumed_epochs": history})
    assert study.trials[-1].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})


def test_warm_start_takes_trials_into_a_changed_space_in_its_terms(space, tmp_path: Path) -> None:
    """lr searched as a log range before, as choices now; widths narrowed; a new parameter. The copied trials
    carry the new space's distributions (Optuna's storage refuses two kinds for one name), and a trial with a
    value the new space cannot take is skipped, not modelled."""
    old = create_study(space, None, "old")
    searcher = SpaceSearcher(space, old)
    for index in range(6):
        searcher.suggest(f"t{index}")
        searcher.on_trial_complete(f"t{index}", {"val_acc": 0.1 * index, "epoch": 4})
    finished = [t for t in old.trials if t.state == TrialState.COMPLETE]
    kept_lr = finished[0].params["lr"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(textwrap.dedent(SPACE).replace(
        "lr: {type: float, low: 0.01, high: 0.3, log: true}",
        f"lr: {{choices: [{kept_lr!r}, 0.5]}}\n  momentum: {{type: float, low: 0.8, high: 0.95}}"))
    new_space = load_space(changed)
    new = create_study(new_space, None, "new")
    copied, skipped = warm_start(new, old, new_space)
    assert copied >= 1 and copied + skipped == len([t for t in old.trials if t.state != TrialState.RUNNING
                                                    and t.state != TrialState.FAIL])
    assert all(t.params["lr"] == kept_lr for t in new.trials)
    assert all(isinstance(t.distributions["lr"], CategoricalDistribution) for t in new.trials)
    # the new study samples on: the copied trials do not clash with the new space's distributions
    next_searcher = SpaceSearcher(new_space, new)
    assert next_searcher.suggest("next") is not None


def test_warm_start_copies_finished_trials_with_their_params_and_curves(space) -> None:
    old = create_study(space, None, "old")
    searcher = SpaceSearcher(space, old)
    for trial_id in ("stopped", "finished", "crashed", "running"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("stopped", {"val_acc": 0.3, "epoch": 1})
    for epoch in range(1, 4):
        searcher.on_trial_result("finished", {"val_acc": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("finished", {"val_acc": 0.4, "epoch": 4})
    searcher.on_trial_complete("crashed", None, error=True)
    searcher.on_trial_result("running", {"val_acc": 0.2, "epoch": 1})
    assert searcher.rejected > 0  # infeasible samples are PRUNED too: they teach the new sweep's TPE as well

    new = create_study(space, None, "new")
    assert warm_start(new, old, space) == (2 + searcher.rejected, 0)  # not the FAIL or RUNNING ones
    assert all(t.user_attrs["warm_start_from"] == "old" for t in new.trials)
    by_id = {t.user_attrs["ray_trial_id"]: t for t in new.trials if "ray_trial_id" in t.user_attrs}
    assert set(by_id) == {"stopped", "finished"}
    assert by_id["stopped"].state == TrialState.PRUNED and by_id["stopped"].intermediate_values == {1: 0.3}
    finished = by_id["finished"]
    assert finished.state == TrialState.COMPLETE and finished.value == pytest.approx(0.4)
    assert finished.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    source = next(t for t in old.trials if t.user_attrs.get("ray_trial_id") == "finished")
    assert finished.params == source.params and finished.distributions == source.distributions
    infeasible = [t for t in new.trials if "infeasible" in t.user_attrs]
    assert len(infeasible) == searcher.rejected and all(t.state == TrialState.PRUNED for t in infeasible)


def test_tpe_ranks_full_runs_above_asha_stopped_ones(space) -> None:
    """Optuna's own split: the trials that ran every epoch are "good" before any ASHA-stopped one, whatever
    the stopped trials' early scores (stock OptunaSearch ranks them by those scores, as if complete)."""
    distributions = {"x": FloatDistribution(0, 1)}
    study = create_study(space, None, "split")  # the sampler a sweep gets
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, params={"x": 0.9}, distributions=distributions,
                                 intermediate_values={e: 0.05 * e for e in range(1, 11)}))
    for i in range(19):
        x = i / 40  # all below 0.5, with early scores above the complete trial's final one
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=distributions,
                                     intermediate_values={1: 0.6 + x / 10}))
    drawn = [study.ask(distributions).params["x"] for _ in range(20)]
    assert sum(x > 0.5 for x in drawn) / len(drawn) > 0.6


def test_sampler_samples_on_alike_after_pickling(space) -> None:
    """Ray pickles the searcher, with its study and sampler, for --resume, at any point in a sweep: the restored
    sampler draws what the original would have."""
    distributions = {"x": FloatDistribution(0, 1)}
    study = create_study(space, None, "pickled")  # the sampler a sweep gets
    for _ in range(5):
        trial = study.ask(distributions)
        study.tell(trial, trial.params["x"])
    restored = pickle.loads(pickle.dumps(study))
    assert restored.sampler is not study.sampler
    assert [restored.ask(distributions).params["x"] for _ in range(3)] == [
        study.ask(distributions).params["x"] for _ in range(3)]


def test_a_sampler_pickled_before_2026_12_resumes_as_optunas_tpe() -> None:
    """Sweeps started before 2026-12 pickled tuner's LatinStartTPESampler (start-up trials from a Latin
    hypercube) with their searcher; --resume unpickles it as Optuna's TPE, which samples on. The fixture is
    such a sampler, pickled by the code of commit d86eaac after two of its four start-up trials."""
    fixture = Path(__file__).with_name("fixtures") / "latin_start_sampler_2026-11.pickle"
    sampler = pickle.loads(fixture.read_bytes())
    assert type(sampler) is optuna.samplers.TPESampler
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distributions = {"lr": FloatDistribution(0.0, 1.0)}
    for _ in range(6):  # start-up draws, then TPE's own
        trial = study.ask(distributions)
        assert 0.0 <= trial.params["lr"] <= 1.0
        study.tell(trial, trial.params["lr"])
    assert len({t.params["lr"] for t in study.trials}) == 6


def test_the_optuna_internal_the_searcher_reads_still_exists() -> None:
    """The one private attribute of Optuna the searcher relies on (tuner.searcher.trial_key): if an Optuna
    upgrade renames it, this fails by name, not a sweep midway."""
    study = optuna.create_study(direction="maximize")
    study.ask()  # a trial of another number first, so that a key and a number cannot be confused
    asked = study.ask()
    frozen = study.get_trials(deepcopy=False)[asked.number]
    assert isinstance(asked._trial_id, int) and frozen._trial_id == asked._trial_id
    again = optuna.Trial(study, frozen._trial_id)  # what trial_key feeds: the same trial, acted on again
    again.report(0.5, 1)
    again.set_user_attr("seen", True)
    study.tell(again, 0.5)
    told = study.get_trials(deepcopy=False)[asked.number]
    assert (told.number, told.state, told.intermediate_values, told.user_attrs) == (
        asked.number, TrialState.COMPLETE, {1: 0.5}, {"seen": True})


def test_a_search_whose_constraints_reject_every_sample_stops_with_one_user_error(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """Not a RuntimeError traceback: the sweep ends with one `error:` line naming the constraint and the fix, and
    the rejected samples stay in the study (told PRUNED, as every infeasible one is)."""
    path = tmp_path / "cut.yaml"
    # Only widths (4, 4) fit: 1 of 16,384 draws, so a run of 20 rejections at search.seed 3 (the load refuses a
    # limit below the smallest network, so a space cannot be made infeasible outright)
    path.write_text(textwrap.dedent(SPACE).replace("choices: [[4, 8], [8, 16], [32, 64], [48, 96]]",
                                                   "type: int, low: 4, high: 512, step: 4, per_stage: 2")
                    .replace("max_params: 30000", "max_params: 1000"))
    space = load_space(path)
    monkeypatch.setattr(searcher_module, "MAX_REJECTIONS", 20)  # the give-up itself, without 1,000 asks
    study = create_study(space, None, "cut")
    rejected: list[int] = []
    searcher = SpaceSearcher(space, study, on_rejected=lambda i, c, r: rejected.append(i))
    with pytest.raises(UserError) as err:
        searcher.suggest("t")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(path) in message
    assert "20 samples in a row broke the constraints" in message and "max_params 1,000" in message
    assert "raise max_params" in message
    assert rejected == list(range(1, 21)) and searcher.rejected == 20
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 20


def test_the_progress_count_leaves_out_the_trials_a_warm_start_copied(space) -> None:
    """`[3/2] trial t001 completed`: the finished trials copied from the earlier sweep are not this sweep's."""
    old = create_study(space, None, "old")
    searcher = SpaceSearcher(space, old)
    for trial_id in ("a", "b"):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"val_acc": 0.5, "epoch": 4})
    new = create_study(space, None, "new")
    assert warm_start(new, old, space)[0] >= 2
    recorder = OutcomeRecorder(None, SimpleNamespace(study=new), None, "val_acc", max_epochs=4,  # type: ignore[arg-type]
                               trials=2)
    recorder.count_finished()
    assert recorder.done == 0
    resumed = SpaceSearcher(space, new)  # a trial of this sweep, finished by an earlier driver of it, still counts
    resumed.suggest("c")
    resumed.on_trial_complete("c", {"val_acc": 0.6, "epoch": 4})
    recorder.count_finished()
    assert recorder.done == 1


def test_tpe_models_a_conditional_parameter_jointly_with_the_rest(tmp_path: Path) -> None:
    """Optuna's TPE draws jointly only the parameters every finished trial has. momentum, which an adamw trial does
    not use, is drawn in every trial all the same, so that TPE keeps it in its joint model after the start-up
    trials (drawn only for sgd, it fell back to being sampled on its own)."""
    path = tmp_path / "conditional.yaml"
    path.write_text(textwrap.dedent("""
        parameters:
          optimizer: [sgd, adamw]
          lr: {type: float, low: 0.01, high: 0.3, log: true}
          momentum: {type: float, low: 0.8, high: 0.97, when: {optimizer: sgd}}
        search: {seed: 5, startup_trials: 4}
        scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
        """))
    space = load_space(path)
    study = create_study(space, None, "conditional")  # the sampler a sweep gets
    optimizers = set()
    for _ in range(8):
        trial = study.ask()
        config = space.sample(trial)
        optimizers.add(config.optimizer)
        study.tell(trial, config.lr)
    assert optimizers == {"sgd", "adamw"}
    trial = study.ask()
    joint = study.sampler.infer_relative_search_space(study, study.trials[trial.number])
    assert set(joint) == {"optimizer", "lr", "momentum"}

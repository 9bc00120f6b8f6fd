"""Promote a registered model version to `champion` if it beats the current one on the same data.

    python -m tuner.promote --sweep widths-0412        # the version that sweep registered
    python -m tuner.promote --version 7 --force        # move the alias whatever the comparison says

The candidate and the champion are rebuilt from the raw checkpoints logged with them
(`checkpoint/checkpoint.pt`) and evaluated on the official test split with flip test-time
augmentation. The result is recorded on each version as tags (`eval.test_acc`, `eval.test_loss`,
`eval.data_fingerprint`, `eval.images`, `eval.tta_flip`, `eval.at`), so a champion already evaluated
on identical data is not evaluated again. The alias moves only if the candidate is strictly better,
or with --force. Without a test split the command says so and, with --allow-val only, compares the
validation accuracies recorded at registration (tag `val_acc`), and only of versions whose sweeps ran on
the same images (tag `data_fingerprint`; otherwise the champion counts as one that cannot be evaluated).

A version may hold a final fit (tag `checkpoint_kind=final_fit`, tuner/final_fit.py): its checkpoint is the
final fit's (tag `checkpoint_uri` names the final fit's run), so the test split scores what was registered.
A final fit on all images has no validation accuracy of its own: its `val_acc` is the search checkpoint's
(also `search_val_acc`), and --allow-val says so when it compares that figure.
"""
from __future__ import annotations

# ruff: noqa: E402 - `python -m tuner.promote` parses its flags before mlflow and torch load (below)
import argparse

from tuner.errors import OneLineParser, data_folder
from tuner.mlflow_names import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, add_tracking_argument, quiet_downloads


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuner.promote",
        description="Evaluate a registered version on the test split and move the 'champion' alias if it is better.",
        epilog="example: python -m tuner.promote --sweep widths-0412 --data-dir data "
               "--mlflow-uri http://127.0.0.1:5000",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="candidate = the newest version registered by this sweep")
    which.add_argument("--version", help="candidate = this version number")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help=f"registered model (default: {DEFAULT_MODEL_NAME})")
    parser.add_argument("--data-dir", default="data", type=data_folder,
                        help="folder holding cifar-10-batches-py/test_batch (default: data)")
    parser.add_argument("--force", action="store_true", help="move the alias even if the candidate is not better")
    parser.add_argument("--allow-val", action="store_true",
                        help="without a test split, compare the validation accuracy recorded at registration")
    add_tracking_argument(parser)
    return parser


if __name__ == "__main__":  # --help and flag errors answer here, before the imports below take seconds
    _parser().parse_args()

import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tuner.checkpoint import load_checkpoint, model_from_checkpoint
from tuner.data import BATCH_DIR, TEST_FILE, ImageSet, fingerprint, load_test
from tuner.errors import UserError, excerpt, exit_on_user_error, suggest
from tuner.evaluate import evaluate_images
from tuner.mlflow_store import open_client, store_outage_is_user_error, store_unavailable
from tuner.tracking import CHECKPOINT_ARTIFACT

# What to do about a version whose checkpoint is damaged or cannot be fetched.
REPAIR = "choose another version with --version, or register a new one with a tuner sweep"


@dataclass(frozen=True)
class Score:
    """One version's accuracy on the comparison data."""

    version: str
    metric: str  # test_acc or val_acc
    accuracy: float
    loss: float | None = None
    reused: bool = False  # taken from an earlier evaluation recorded on the version
    # the evaluation to record on the version as eval.* tags: written only once every score is known, so a
    # promote that fails part-way leaves the registry as it found it
    record: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Unscored:
    """The champion when it cannot be evaluated and --force replaces it anyway."""

    version: str
    reason: str


def registered_model_names(client: MlflowClient) -> list[str]:
    return [m.name for m in client.search_registered_models(max_results=1000)]


def require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        names = registered_model_names(client)
        known = f"registered models: {', '.join(names)}" if names else "no model is registered yet: run a sweep first"
        if err.error_code == "INVALID_PARAMETER_VALUE":  # a name MLflow refuses ('', 'a/b'): say why in its words
            raise UserError(f"--model-name {name!r} is not a model name ({err.message.splitlines()[0][:120]}); "
                            f"{known}") from None
        raise UserError(f"unknown registered model {excerpt(name)}{suggest(name, names)}; {known}") from None


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name = '{name}'", max_results=10000))


def find_version(client: MlflowClient, name: str, version: str | None, sweep: str | None) -> ModelVersion:
    """The candidate: `--version N`, or the newest version whose tag `sweep` equals `--sweep NAME`."""
    require_model(client, name)
    versions = all_versions(client, name)
    numbers = sorted(int(v.version) for v in versions)
    if version is not None:
        if not version.isdigit():
            raise UserError(f"--version {version!r} is not a version number; versions of '{name}': "
                            f"{', '.join(map(str, numbers)) or 'none'}")
        for v in versions:
            if str(v.version) == version:  # int from a database store, str over REST
                return v
        raise UserError(f"model '{name}' has no version {version}; its versions are "
                        f"{', '.join(map(str, numbers)) or 'none'}")
    matching = [v for v in versions if v.tags.get("sweep") == sweep]
    if not matching:
        sweeps = sorted({v.tags["sweep"] for v in versions if "sweep" in v.tags})
        hint = f"sweeps with versions: {', '.join(sweeps)}" if sweeps else "no version carries a sweep tag"
        raise UserError(f"sweep '{sweep}' registered no version of '{name}'{suggest(sweep, sweeps)}; {hint} "
                        f"(a sweep registers its best trial when it ends; or pass --version N)")
    return max(matching, key=lambda v: int(v.version))


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def checkpoint_source(version: ModelVersion) -> str | None:
    """Where a version's training checkpoint is logged: tag checkpoint_uri, else the version's run."""
    return version.tags.get("checkpoint_uri") or (
        f"runs:/{version.run_id}/{CHECKPOINT_ARTIFACT}" if version.run_id else None
    )


def checkpoint_label(version: ModelVersion, name: str) -> str:
    """A version's checkpoint as errors name it: the version and where the checkpoint lives in MLflow, never
    the temporary copy promote reads (gone by the time anyone reads the error)."""
    return f"the checkpoint of version {version.version} of '{name}' ({checkpoint_source(version)})"


def checkpoint_of(client: MlflowClient, uri: str, version: ModelVersion, name: str) -> dict:
    """The training checkpoint logged beside a version (tag checkpoint_uri, else the version's run)."""
    source = checkpoint_source(version)
    fix = (f"version {version.version} of '{name}' has no training checkpoint ({CHECKPOINT_ARTIFACT}); "
           f"only versions registered by a tuner sweep can be evaluated; choose another with --version")
    if source is None or not source.startswith("runs:/"):
        raise UserError(fix)
    run_id, _, artifact = source[len("runs:/"):].partition("/")
    folder, _, filename = artifact.rpartition("/")
    try:
        present = {Path(f.path).name for f in client.list_artifacts(run_id, folder)}
    except MlflowException as err:
        if store_unavailable(err):  # an outage is not a missing checkpoint
            raise
        present = set()
    if filename not in present:
        raise UserError(fix)
    label = checkpoint_label(version, name)
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow

        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        except (MlflowException, OSError) as err:
            if store_unavailable(err):
                raise
            detail = " ".join(str(err).split())[:160]
            raise UserError(f"{label} cannot be downloaded ({type(err).__name__}: {detail}); {REPAIR}") from None
        return load_checkpoint(path, name=label, fix=REPAIR)


def accuracy_tag(version: ModelVersion, name: str, tag: str, fix: str) -> float:
    """A tag that holds an accuracy, as a float in [0, 1]; anything else (tags are free text anyone can edit)
    is one error naming the version and the tag."""
    value = version.tags[tag]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:  # also false for nan
        raise UserError(f"version {version.version} of '{name}' has tag {tag}={excerpt(value)}, not an accuracy "
                        f"(a number in [0, 1]); {fix}")
    return number


def recorded_evaluation(version: ModelVersion, fingerprint: str) -> tuple[float, float | None] | None:
    """(accuracy, loss) recorded by an earlier promote on the same data; None when there is none, or when the
    tags do not hold numbers (edited by hand): the version is then simply evaluated again."""
    tags = version.tags
    if tags.get("eval.data_fingerprint") != fingerprint or "eval.test_acc" not in tags:
        return None
    try:
        accuracy = float(tags["eval.test_acc"])
        loss = float(tags["eval.test_loss"]) if "eval.test_loss" in tags else None
    except ValueError:
        return None
    if not (0.0 <= accuracy <= 1.0) or (loss is not None and not math.isfinite(loss)):
        return None
    return accuracy, loss


def score_on_test(client: MlflowClient, uri: str, version: ModelVersion, name: str,
                  test: ImageSet, fingerprint: str) -> Score:
    """Test accuracy (flip TTA); reuses an evaluation recorded on the version for the same data. Records
    nothing: the new evaluation is in `Score.record` for `record_evaluations`."""
    recorded = recorded_evaluation(version, fingerprint)
    if recorded is not None:
        return Score(version.version, "test_acc", *recorded, reused=True)
    state = checkpoint_of(client, uri, version, name)
    model, _ = model_from_checkpoint(state, checkpoint_label(version, name), fix=REPAIR)
    loss, accuracy = evaluate_images(model, test, tta_flip=True)
    record = {
        "eval.test_acc": f"{accuracy:.6f}",
        "eval.test_loss": f"{loss:.6f}",
        "eval.data_fingerprint": fingerprint,
        "eval.images": str(len(test)),
        "eval.tta_flip": "true",
        "eval.at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Score(version.version, "test_acc", accuracy, loss, record=record)


def record_evaluations(client: MlflowClient, name: str, *scores: Score | Unscored | None) -> None:
    """Write the eval.* tags of the scores evaluated now (each version once)."""
    written: set[str] = set()
    for score in scores:
        if isinstance(score, Score) and score.record and str(score.version) not in written:
            written.add(str(score.version))
            for key, value in score.record.items():
                client.set_model_version_tag(name, score.version, key, value)


def score_on_val(version: ModelVersion, name: str) -> Score:
    if "val_acc" not in version.tags:
        raise UserError(f"version {version.version} of '{name}' has no val_acc tag to compare: "
                        f"add test_batch to the data folder to evaluate it on the test split")
    if version.tags.get("checkpoint_kind") == "final_fit":
        print(f"version {version.version} holds a final fit (trained on {version.tags.get('train_images', '?')} "
              f"images): its val_acc is its search checkpoint's (trial {version.tags.get('search_trial_id', '?')})")
    accuracy = accuracy_tag(version, name, "val_acc", "correct or delete the tag in MLflow, or add test_batch to "
                                                      "the data folder to evaluate on the test split instead")
    return Score(version.version, "val_acc", accuracy)


def champion_on_val(current: ModelVersion, candidate: ModelVersion, name: str) -> Score:
    """The champion's val_acc, as a figure to compare with the candidate's: only when both were measured on the
    same images (their `data_fingerprint` tags; a version without one is taken as it is)."""
    theirs, mine = current.tags.get("data_fingerprint"), candidate.tags.get("data_fingerprint")
    if theirs and mine and theirs != mine:
        raise UserError(f"its val_acc was measured on other images (data fingerprint {theirs}) than version "
                        f"{candidate.version}'s ({mine}), so the two do not compare; add test_batch to the data "
                        "folder to score both on the test split")
    return score_on_val(current, name)


def table(rows: list[tuple[str, Score | Unscored | None]]) -> str:
    lines = [f"{'':10s} {'version':>7s}  {'metric':8s} {'accuracy':>8s}  {'loss':>7s}  source"]
    for role, score in rows:
        if score is None:
            lines.append(f"{role:10s} {'-':>7s}  {'-':8s} {'-':>8s}  {'-':>7s}  (no champion yet)")
            continue
        if isinstance(score, Unscored):
            lines.append(f"{role:10s} {str(score.version):>7s}  {'-':8s} {'-':>8s}  {'-':>7s}  (cannot be evaluated)")
            continue
        loss = f"{score.loss:.4f}" if score.loss is not None else "-"
        source = "recorded earlier" if score.reused else ("evaluated now" if score.metric == "test_acc" else
                                                          "recorded at registration")
        version = str(score.version)  # int from a database store, str over REST
        lines.append(f"{role:10s} {version:>7s}  {score.metric:8s} {score.accuracy:8.4f}  {loss:>7s}  {source}")
    return "\n".join(lines)


def test_split(data_dir: str | Path, allow_val: bool) -> ImageSet | None:
    """The test split of --data-dir; None when there is none and --allow-val allows comparing val_acc."""
    folder = Path(data_dir).expanduser()
    where = folder / BATCH_DIR / TEST_FILE
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--data-dir {data_dir} is a file, not a folder: give the folder that holds "
                        f"{BATCH_DIR}/{TEST_FILE}")
    test = load_test(folder, source="the test_batch of CIFAR-10's cifar-10-python.tar.gz: promote never downloads")
    if test is None:
        missing = f"--data-dir {data_dir} does not exist" if not folder.exists() else f"{where} does not exist"
        if not allow_val:
            raise UserError(f"no test split: {missing}; put the CIFAR-10 {TEST_FILE} at {where}, or pass --allow-val "
                            f"to compare the validation accuracies recorded at registration")
        print(f"no test split: {missing}")  # only as the note before --allow-val's fallback: else the error says it
        return None
    if len(test) == 0:
        raise UserError(f"{where} holds 0 images: nothing to evaluate on; replace it with the CIFAR-10 {TEST_FILE} "
                        f"(10000 images)")
    return test


def promote(
    name: str, version: str | None, sweep: str | None, data_dir: str | Path, force: bool, allow_val: bool,
    mlflow_uri: str | None,
) -> bool:
    """Evaluate, compare, move the alias when better (or forced); True when the candidate is champion.

    Everything is evaluated before anything is written: a promote that fails (a champion that cannot be
    evaluated without --force, a bad tag) leaves every tag and the alias as they were."""
    client, uri = open_client(mlflow_uri)
    # The alias moves last, after both evaluations are recorded: a store that stops answering on the way leaves
    # the champion as it was (or already moved, when only the last tags were lost), and a rerun is safe.
    with store_outage_is_user_error(uri, f"promoting a version of '{name}'",
                                    kept=f"the '{CHAMPION_ALIAS}' alias moves only after every evaluation is recorded"):
        return compare_and_move(client, uri, name, version, sweep, data_dir, force, allow_val)


def compare_and_move(client: MlflowClient, uri: str, name: str, version: str | None, sweep: str | None,
                     data_dir: str | Path, force: bool, allow_val: bool) -> bool:
    candidate = find_version(client, name, version, sweep)
    current = champion(client, name)
    test = test_split(data_dir, allow_val)
    if test is None:
        print("comparing the validation accuracy recorded at registration (--allow-val); "
              "val splits of different sweeps may differ")
        new = score_on_val(candidate, name)
    else:
        test_fingerprint = fingerprint(test)
        new = score_on_test(client, uri, candidate, name, test, test_fingerprint)
    old: Score | Unscored | None = None
    if current is not None:
        if str(current.version) == str(candidate.version):
            old = new
        else:
            try:
                old = (champion_on_val(current, candidate, name) if test is None else
                       score_on_test(client, uri, current, name, test, test_fingerprint))
            except UserError as err:
                if not force:
                    raise UserError(f"cannot evaluate the current champion (version {current.version}): {err}; "
                                    f"pass --force to replace it without a comparison") from None
                old = Unscored(str(current.version), str(err))
    print(table([("candidate", new), ("champion", old)]))
    record_evaluations(client, name, new, old)
    if current is not None and str(current.version) == str(candidate.version):
        print(f"version {candidate.version} already holds the '{CHAMPION_ALIAS}' alias")
        return True
    better = old is None or (isinstance(old, Score) and new.accuracy > old.accuracy)
    if better or force:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, candidate.version)
        client.set_model_version_tag(name, candidate.version, "promoted.at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if current is not None:  # the lineage: which champion this one replaced, evaluated or not
            client.set_model_version_tag(name, candidate.version, "promoted.over", str(current.version))
        if isinstance(old, Unscored):
            why = f"forced; replaced version {old.version}, which could not be evaluated"
        elif old is None:
            why = "no champion before"
        else:
            why = (f"forced over version {old.version}" if force and not better else
                   f"over version {old.version}") + f", {new.accuracy - old.accuracy:+.4f} {new.metric}"
        print(f"promoted: '{name}@{CHAMPION_ALIAS}' -> version {candidate.version} ({why})")
        return True
    assert isinstance(old, Score)
    print(f"kept: version {old.version} stays '{CHAMPION_ALIAS}' ({new.accuracy - old.accuracy:+.4f} {new.metric}); "
          f"pass --force to promote version {candidate.version} anyway")
    return False


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with quiet_downloads():
        promote(args.model_name, args.version, args.sweep, args.data_dir, args.force, args.allow_val,
                args.mlflow_uri)


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)

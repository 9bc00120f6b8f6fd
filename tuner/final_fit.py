"""The final fit (a space's `final:` section): the champion's configuration trained once more, and registered.

The search ranks configurations on the validation split; the model a user deploys should then learn from
every training image. After `Tuner.fit()` returns, the driver trains the best trial's TrainConfig again, with
`epochs = final.epochs` and everything else (the seed too) unchanged, as one Ray task holding a trial's
resources (`resources.cpus`, `resources.gpus`): on a GPU cluster it trains on a GPU worker, never on the
driver. The task is `tuner.train.fit`, as a trial's is.

- `train_on: all` trains on the training and the validation split, every training image the sweep loaded
  (`data.subset` respected). Nothing is held out, so only training loss and accuracy are recorded: `fit`
  still evaluates each epoch, on FINAL_MONITOR_IMAGES of the images it trains on, and those figures are
  dropped (the plateau schedule steps on that loss: use `train_on: train` to keep its held-out signal).
- `train_on: train` trains on the search's training split; the validation split still scores it.

Who writes what (cluster/README.md, "Who may write what"): a worker may not write `_driver/`, so the task
writes nothing; it returns the checkpoint as bytes and the rest as plain values. The driver stores them as
`_driver/<sweep>/final_fit.pt` and `final_fit.json`, reads the checkpoint back with `weights_only=True`, and
writes MLflow (`tracking.SweepRun`): a child run `final fit of t007` with the config, the per-epoch training
figures and a tag naming the search trial's run; then the registered version, whose lineage links both.

Faults: an error in the task, a diverged fit or a worker lost beyond Ray's retries registers the search
checkpoint instead (tag `checkpoint_kind=search`), said in one line. A driver killed during the fit leaves no
record: `--resume` finds every trial finished and runs the fit again, from its first epoch (the task keeps
no checkpoint of its own). One killed after the record was stored registers what it recorded.
"""
from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner import interrupts
from tuner.checkpoint import load_checkpoint
from tuner.config import TrainConfig
from tuner.data import SPLIT_RECORD, DataSplits, ImageSet, split_record
from tuner.errors import UserError
from tuner.space import FinalFit, SearchSpace
from tuner.sweep_state import FINAL_CHECKPOINT, FINAL_RECORD, SweepState

HELD_OUT_METRICS = ("val_loss", "val_acc")
# A worker lost while training (a node preempted) is retried this often; an error raised by the training
# is not retried: it would fail the same way.
TASK_RETRIES = 2
WAIT_S = 1.0  # how often the driver looks for Ctrl-C while the task trains


class FinalFitInterrupted(Exception):
    """Ctrl-C during the final fit: the task is cancelled; --resume runs the final fit again."""


@dataclass
class FinalFitOutcome:
    """What the driver has after a final fit: its record (plain values, stored as final_fit.json) and the
    trained state, or None when the fit failed and the search checkpoint is to be registered."""

    record: dict[str, Any]
    checkpoint: dict[str, Any] | None

    @property
    def failed(self) -> bool:
        return self.checkpoint is None


def final_splits(data: DataSplits, train_on: str) -> DataSplits:
    """The splits `fit` gets: with `all`, training images = train + val and the monitored split a few of them."""
    if train_on == "train":
        return data
    train = ImageSet(np.concatenate([data.train.images, data.val.images]),
                     np.concatenate([data.train.labels, data.val.labels]))
    _, monitored = FinalFit(train_on=train_on).images(len(data.train), len(data.val))  # one home for the rule
    return DataSplits(train, data.val.take(np.arange(monitored)))


def train_final(config: dict[str, Any], data: DataSplits, train_on: str, cpus: float,
                label: str) -> tuple[dict[str, Any], bytes | None]:
    """The Ray task: `fit` the config on the final fit's images. Returns (plain values: status, per-epoch
    history, images, seconds, where it ran; the checkpoint as `torch.save` bytes, None unless completed)."""
    import ray
    import torch

    from tuner.device import pick_device
    from tuner.train import fit
    from tuner.trainable import use_cpus

    use_cpus(cpus)
    train_config = TrainConfig.from_dict(config, source="final fit config")
    splits = final_splits(data, train_on)
    held_out = train_on == "train"
    started = time.monotonic()
    history: list[dict[str, float]] = []

    def on_epoch(metrics: Any, _checkpoint: Any) -> None:
        row = {k: v for k, v in metrics.as_dict().items() if held_out or k not in HELD_OUT_METRICS}
        row["reported_at"] = time.time()
        history.append(row)
        val = f", val acc {metrics.val_acc:.4f}" if held_out else ""
        print(f"final fit of {label}: epoch {metrics.epoch}/{train_config.epochs}, train acc {metrics.train_acc:.4f}"
              f"{val} ({time.monotonic() - started:.0f}s)", flush=True)

    result = fit(train_config, splits, on_epoch)
    summary = {"status": result.status, "history": history, "train_images": len(splits.train),
               "seconds": time.monotonic() - started, "device": pick_device().type,
               "node_id": ray.get_runtime_context().get_node_id()}
    if result.status != "completed" or result.checkpoint is None:
        return summary, None
    state = result.checkpoint
    if not held_out:  # the monitored images were trained on: no validation figure leaves the task
        state["history"] = [{**m, **dict.fromkeys(HELD_OUT_METRICS, float("nan"))} for m in state["history"]]
    state["final_fit"] = {"train_on": train_on, "train_images": len(splits.train)}
    # The sweep's split and which of its images were trained on (the `data` the trials had, not `splits`, whose
    # validation part with `all` is a few trained-on images): `python -m tuner.train --resume` continues a
    # `train` fit on the trials' split and refuses an `all` one, which has nothing held out.
    split = split_record(data, train_on)
    if split is not None:
        state[SPLIT_RECORD] = split
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return summary, buffer.getvalue()


def run_task(space: SearchSpace, config: TrainConfig, data_ref: Any, label: str) -> tuple[dict, bytes | None]:
    """`train_final` as one Ray task with the trials' resources, on the sweep's data (`data_ref`, the object the
    trials had: not put a second time); waits, watching for Ctrl-C."""
    import ray

    # train_final is looked up here, at call time: a test swaps it for a task that fails
    task = ray.remote(train_final).options(num_cpus=space.resources.cpus, num_gpus=space.resources.gpus,
                                           max_retries=TASK_RETRIES, name=f"final fit of {label}")
    ref = task.remote(config.to_dict(), data_ref, space.final.train_on, space.resources.cpus, label)
    while not ray.wait([ref], timeout=WAIT_S)[0]:
        if interrupts.interrupted():
            ray.cancel(ref, force=True)
            raise FinalFitInterrupted
    return ray.get(ref)


def fit_champion(state: SweepState, sweep: Any, space: SearchSpace, data: DataSplits, data_ref: Any,
                 best: Mapping[str, Any]) -> FinalFitOutcome:
    """The final fit of the best trial (`best`: trial_id, label, config, checkpoint as run.summarise has them):
    the one an earlier driver of this sweep stored, else a new one. `sweep` is the tracking.SweepRun."""
    import ray

    epochs, train_on = space.final_epochs, space.final.train_on
    label, trial_id = best["label"], best["trial_id"]
    config = TrainConfig.from_dict({**best["config"], "epochs": epochs}, source="final fit config")
    images, _ = space.final.images(len(data.train), len(data.val))
    key = {"trial_id": trial_id, "search_checkpoint": best["checkpoint"], "epochs": epochs, "train_on": train_on}
    record = state.read_json(FINAL_RECORD)
    if record and all(record.get(k) == v for k, v in key.items()) and state.exists(FINAL_CHECKPOINT):
        try:
            checkpoint = stored_checkpoint(state)
        except UserError as err:
            print(f"the final fit an earlier driver stored is unreadable ({err}); fitting again", flush=True)
        else:
            print(f"final fit of {label} was done by an earlier driver of this sweep: registering it", flush=True)
            # That driver may have died before MLflow had it all; what the run holds is not sent again
            sweep.end_final_fit_run(record["run_id"], record["history"], "completed")
            return FinalFitOutcome(record, checkpoint)

    run_id = sweep.final_fit_run(trial_id, label, config,
                                 {"final.train_on": train_on, "final.train_images": str(images)})
    res = space.resources
    print(f"final fit of {label}: {epochs} epoch{'s' * (epochs != 1)} on {images:,} images "
          f"({space.final.describe(short=True)}), as one Ray task with {res.cpus:g} CPU, {res.gpus:g} GPU", flush=True)
    started = time.monotonic()
    try:
        summary, blob = run_task(space, config, data_ref, label)
    except ray.exceptions.RayError as err:  # an error in the task, or its worker lost beyond the retries
        if interrupts.interrupted():  # the stop that reached the driver reached the task's worker too (one group)
            raise FinalFitInterrupted from None
        return failed(sweep, run_id, label, task_error(err), [])
    if blob is None:
        if interrupts.interrupted():
            raise FinalFitInterrupted
        return failed(sweep, run_id, label, f"the fit {summary['status']}", summary["history"])
    try:
        checkpoint = stored_checkpoint(state, blob)  # read as data (weights_only) before anything is stored
    except UserError as err:
        return failed(sweep, run_id, label, f"its checkpoint is unreadable: {err}", summary["history"])
    record = {**key, "label": label, "run_id": run_id, "status": "completed", "train_images": summary["train_images"],
              "seconds": time.monotonic() - started, "train_seconds": summary["seconds"],
              "device": summary["device"], "node_id": summary["node_id"], "history": summary["history"]}
    # The checkpoint first, then the record that points at it: a driver killed between them fits again
    state.write_bytes(FINAL_CHECKPOINT, blob)
    state.write_json(FINAL_RECORD, record)
    sweep.end_final_fit_run(run_id, record["history"], "completed",
                            {"tuner.final_seconds": f"{record['seconds']:.1f}", "tuner.final_device": record["device"]})
    return FinalFitOutcome(record, checkpoint)


def task_error(err: BaseException) -> str:
    """`RuntimeError: what it said` of the exception the task raised (a RayTaskError's cause), on one short line."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines()
    text = lines[-1].strip() if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def failed(sweep: Any, run_id: str, label: str, reason: str, history: list[dict]) -> FinalFitOutcome:
    """A final fit that failed: its run ends FAILED with the reason, and the search checkpoint stands."""
    print(f"final fit of {label} failed ({reason}): registering the search checkpoint of {label} instead "
          "(checkpoint_kind=search)", flush=True)
    sweep.end_final_fit_run(run_id, history, "failed", {"tuner.final_error": reason})
    return FinalFitOutcome({"label": label, "run_id": run_id, "status": "failed", "error": reason}, None)


def stored_checkpoint(state: SweepState, blob: bytes | None = None) -> dict[str, Any]:
    """The stored final-fit checkpoint (or `blob`, its bytes), read as tensors and plain values only."""
    data = blob if blob is not None else state.read_bytes(FINAL_CHECKPOINT)
    path = state.workdir / FINAL_CHECKPOINT
    path.write_bytes(data or b"")
    try:
        return load_checkpoint(path)
    finally:
        path.unlink(missing_ok=True)


def stored_record(state: SweepState, trial_id: str) -> dict[str, Any] | None:
    """The record of the completed final fit of `trial_id` an earlier driver stored, if any (the summary of
    a finished sweep resumed)."""
    record = state.read_json(FINAL_RECORD)
    return record if record and record.get("trial_id") == trial_id else None

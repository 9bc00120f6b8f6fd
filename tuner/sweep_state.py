"""tuner's own state of a sweep, under `<storage>/_driver/<sweep>/` on any filesystem Ray supports.

What a new driver on another machine needs to continue a sweep, besides Ray's experiment state in
`<storage>/<sweep>/`: the Optuna study (`optuna.db`), the budget ledger (`budget.json`), the copy of the
space file (`space.yaml`), the final fit's checkpoint and record (`final_fit.pt`, `final_fit.json`: the task
returns the checkpoint to the driver, which stores it here), the registration record (`registered.json`:
which trial, which checkpoint kind, which model version) and the digests of Ray's state files
(`digests.json`). Only the head (the driver) may write this prefix (cluster/README.md, "Who may
write what"). Everything goes through `pyarrow.fs` (a local path, `s3://`, `gs://`).

The study is sqlite: the driver works on a local copy in a temp folder and uploads a consistent snapshot
of it (sqlite's backup API, written as `optuna.db.partial` and then moved) whenever Ray snapshots the
search (so the study is never older than the searcher state that refers to it), after every finished
trial and at the end; --resume downloads it first. Every file is written as `<name>.partial` and moved.

A `SweepState` pickles as its identity (storage URI, sweep name): Ray pickles the driver's bookkeeping
into its experiment state, and what a resumed driver unpickles must be this process's working copy, not
a path on the machine of the driver that died. So there is one SweepState per sweep in a process
(`open_state`).

Untrusted storage. `--resume` makes Ray unpickle `tuner.pkl`, the searcher state and the experiment
state (whose JSON holds cloudpickled values) from `<storage>/<sweep>/`. The driver records a SHA-256
digest of every such file it writes (the last few versions of each, since Ray uploads them after the
digest is written), in `digests.json` under `_driver/`, and refuses a resume in which any of them does
not match, before Ray reads a byte of it.

Damaged state. A JSON file of this prefix that is not what a driver writes (not JSON, or JSON of another
shape: `{"sha256": 5}`) is one line naming the file and what to do, whichever reader finds it: `read_json`
checks each file against its `Shape` (`SHAPES`, or the one its reader passes), so no reader meets a value
of the wrong type. `verify_ray_state` reads them all before a --resume lets Ray start.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs

from tuner.config import is_int, is_number
from tuner.errors import UserError, excerpt
from tuner.mlflow_names import SQLITE_HEADER, sqlite_header

DRIVER_PREFIX = "_driver"
SPACE_COPY = "space.yaml"
SPACE_OVERRIDES = "space_overrides.json"  # what the first driver's flags changed in the space: {"trials": N}
STUDY_FILE = "optuna.db"
BUDGET_LEDGER = "budget.json"
REGISTRATION = "registered.json"  # trial_id, checkpoint, checkpoint_kind (final_fit or search), model, version
FINAL_CHECKPOINT = "final_fit.pt"  # the final fit's checkpoint as the task returned it (read with weights_only)
FINAL_RECORD = "final_fit.json"  # what the final fit was and measured; written after final_fit.pt
DIGESTS = "digests.json"
TRACKING_RECORD = "tracking.json"  # the tracking store (password hidden) and parent run of the sweep's last driver
# The trials this sweep's drivers gave an outcome, with their last result: a driver killed before Ray's next
# snapshot leaves Ray listing such a trial as running, and a resumed trial reads this to end at once.
ENDED_TRIALS = "ended.json"
TUNER_STATE = "tuner.pkl"  # Ray's pickled Tuner, written once when a sweep's Tuner is made
KEEP_DIGESTS = 8  # versions of one file that may still be on the way to storage when a driver dies
# Files of Ray's experiment folder that --resume reads (and unpickles) and that are not a trial's
STATE_FILE = re.compile(r"(tuner\.pkl|experiment_state-.*\.json|searcher-state-.*\.pkl|search_gen_state-.*\.json"
                        r"|basic-variant-state-.*\.json|callback-states-.*\.pkl)")
IGNORED_FILES = {".validate_storage_marker"}
EXPERIMENT_STATE = re.compile(r"experiment_state-.*\.json")
CHECKPOINT_NAME = re.compile(r"checkpoint_[0-9]{6}")  # Ray's name for a trial's checkpoint folder
STAND_IN_NOTE = "deleted_by_ray.txt"  # the one file of a stand-in for a checkpoint Ray deleted (see below)


@dataclass(frozen=True)
class Shape:
    """What a JSON state file holds when a driver wrote it: `fits(value)` says whether `value` (a dict) is one;
    `what` names it in the error ("the budget ledger"), `fix` says what to do about a damaged one."""

    fits: Callable[[dict], bool]
    what: str
    fix: str = "restore it from a backup, or start a new sweep"


def _digests_fit(value: dict) -> bool:
    digests = value.get("sha256")
    return isinstance(digests, dict) and all(
        isinstance(versions, list) and all(isinstance(d, str) for d in versions) for versions in digests.values())


def _registration_fits(value: dict) -> bool:
    return (all(isinstance(value.get(k), str) for k in ("trial_id", "checkpoint"))
            and (isinstance(value.get("version"), str) or is_int(value.get("version")))
            and value.get("checkpoint_kind", "search") in ("search", "final_fit"))


def _final_record_fits(value: dict) -> bool:
    history = value.get("history")
    return (isinstance(value.get("trial_id"), str) and isinstance(value.get("run_id"), str)
            and is_int(value.get("epochs")) and is_int(value.get("train_images"))
            and isinstance(value.get("train_on"), str) and is_number(value.get("seconds"))
            and isinstance(history, list) and all(
                isinstance(row, dict) and is_int(row.get("epoch")) and all(is_number(v) for v in row.values())
                for row in history))


def _tracking_record_fits(value: dict) -> bool:
    return isinstance(value.get("uri"), str) and isinstance(value.get("run_id"), str)


# The JSON files a driver reads back, each with its shape. ENDED_TRIALS is not here: a damaged record of ended
# trials reads as empty (`ended_results`), as its recorder writes it whole again.
SHAPES: dict[str, Shape] = {
    DIGESTS: Shape(_digests_fit, "the record of Ray's state files",
                   "restore it from a backup, or start a new sweep (without it --resume unpickles nothing)"),
    REGISTRATION: Shape(_registration_fits, "the registration record",
                        "restore it from a backup, or delete it to register the champion again (a new model "
                        "version)"),
    TRACKING_RECORD: Shape(_tracking_record_fits, "the record of the sweep's tracking store",
                           "delete it (it only names that store in --resume's errors)"),
    FINAL_RECORD: Shape(_final_record_fits, "the final fit's record",
                        "restore it from a backup, or delete it to run the final fit again"),
}


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI whose query (`?endpoint_override=...`) stays at the end."""
    if "://" in base:
        split = urllib.parse.urlsplit(base)
        path = "/".join([split.path.rstrip("/"), *(part.strip("/") for part in parts)])
        return urllib.parse.urlunsplit(split._replace(path=path))
    return str(Path(base, *parts))


# Filesystems pyarrow (and so Ray) reads and writes that outlive the driver; not mock://, which is memory
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


GCS_RETRY_S = 15.0


def gcs_filesystem() -> pyarrow.fs.FileSystem:
    """pyarrow's GCS client retrying for GCS_RETRY_S, not its default 15 minutes: a machine without credentials
    (or without a route to Google) would sit silent in `--dry-run`, and the driver's own writes retry anyway."""
    return pyarrow.fs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=GCS_RETRY_S))


def resolve_storage(flag: str) -> tuple[str, pyarrow.fs.FileSystem, str]:
    """--storage as (what Ray writes to, its filesystem, the path on it); one line for a bad one."""
    if not flag.strip():  # Path("") is the working directory: a sweep's state would land beside everything else
        raise UserError("--storage is empty: give a folder (default: runs), s3://bucket/prefix or gs://bucket/prefix")
    scheme = flag.split("://", 1)[0].lower() if "://" in flag else ""
    if scheme and scheme not in STORAGE_SCHEMES:
        raise UserError(f"--storage {excerpt(flag)}: '{scheme[:20]}://' is not a storage a sweep can be "
                        f"resumed from; use a folder or one of {', '.join(f'{s}://' for s in STORAGE_SCHEMES)}")
    storage = flag if "://" in flag else str(Path(flag).expanduser().resolve())
    try:
        if scheme in ("gs", "gcs") and "?" not in storage:
            fs, root = gcs_filesystem(), storage.split("://", 1)[1]
        elif "://" in storage:
            fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        else:
            fs, root = pyarrow.fs.LocalFileSystem(), storage
        info = fs.get_file_info(root)
    except (pyarrow.ArrowException, OSError, ValueError) as err:  # ArrowException: any of pyarrow's, e.g. GCS auth
        raise UserError(f"--storage {excerpt(flag)} cannot be opened ({_first_line(err)}): give a folder, "
                        "s3://bucket/prefix or gs://bucket/prefix that this machine can reach") from None
    if info.type not in (pyarrow.fs.FileType.Directory, pyarrow.fs.FileType.NotFound):
        raise UserError(f"--storage {excerpt(flag)} is a file, not a folder: give the folder (or bucket prefix) "
                        "that holds the sweeps")
    if "://" not in storage:  # a folder made on the first write: where it would be made must be a folder
        ancestor = next(p for p in Path(storage).parents if p.exists())
        if not ancestor.is_dir():
            raise UserError(f"--storage {excerpt(flag)} lies under {ancestor}, which is not a folder: give a "
                            "folder this machine can write")
    return storage, fs, root.rstrip("/")


def ended_results(state: SweepState) -> dict[str, dict[str, Any]]:
    """The last result of each trial an earlier driver of the sweep gave an outcome (ENDED_TRIALS), by trial id.
    Read by the driver (a trial worker may not read the driver's state: cluster/iam/storage-worker.json), which
    hands it to the trials it starts; a damaged record reads as empty (the recorder writes it whole again)."""
    try:
        ended = state.read_json(ENDED_TRIALS) or {}
    except UserError:
        return {}
    if not isinstance(ended, dict):
        return {}
    return {trial_id: result for trial_id, result in ended.items()
            if isinstance(result, dict) and isinstance(result.get("epoch"), int)}


def checkpoint_folders(fs: pyarrow.fs.FileSystem, experiment_path: str, trial_id: str) -> list[str]:
    """The paths of trial `trial_id`'s checkpoint folders in Ray's experiment folder (`t007-<id>/checkpoint_000006`;
    their names sort by epoch). OSError when the storage cannot be listed."""
    folders = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
    for folder in folders:
        if folder.type == pyarrow.fs.FileType.Directory and folder.base_name.endswith(trial_id):
            return checkpoints_in(fs, folder.path)
    return []


def checkpoints_in(fs: pyarrow.fs.FileSystem, trial_folder: str) -> list[str]:
    """The paths of the `checkpoint_NNNNNN` folders in one trial's folder. OSError when it cannot be listed."""
    return [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(trial_folder))
            if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")]


class SweepState:
    """The files of `_driver/<sweep>/` on the storage filesystem, and this driver's working copy of the study."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage = storage
        self.name = name
        self.storage_uri, self.fs, root = resolve_storage(storage)
        self.root = root
        self.prefix = f"{root}/{DRIVER_PREFIX}/{name}"
        self.experiment_path = f"{root}/{name}"  # Ray's folder on self.fs
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tuner-{name}-"))
        self._study_stamp: tuple[int, int] | None = None
        self.expected_trials: set[str] | None = None  # what Ray's newest experiment state lists (--resume)
        # The checkpoint Ray restores each unfinished trial from, as its newest experiment state names it (--resume)
        self.restored_checkpoints: dict[str, str] = {}
        self._unreachable_since: float | None = None  # storage failed a write during the sweep (best_effort)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open_state, (self.storage, self.name)

    def where(self, file: str) -> str:
        return f"{self.prefix}/{file}"

    def describe(self, file: str = "") -> str:
        return join(self.storage_uri, DRIVER_PREFIX, self.name, *([file] if file else []))

    # --- plain files -------------------------------------------------------------------------

    def exists(self, file: str = SPACE_COPY) -> bool:
        return self.fs.get_file_info(self.where(file)).type == pyarrow.fs.FileType.File

    def read_bytes(self, file: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.where(file)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, file: str, data: bytes) -> None:
        """`file.partial`, then moved over `file`: a driver killed mid-write leaves the previous one whole."""
        self.fs.create_dir(self.prefix, recursive=True)
        partial = self.where(file + ".partial")
        with self.fs.open_output_stream(partial) as stream:
            stream.write(data)
        self.fs.move(partial, self.where(file))

    def best_effort(self, what: str, write: Callable[[], None]) -> bool:
        """A write of the sweep's state while trials run. Storage that fails it (OSError: an S3 outage, a full
        disk) does not stop the sweep: one line when it starts failing and one when it works again. The next
        write of the same state (the study at the next trial event, the ledger at the next result) stores what
        this one missed; a driver that dies before then leaves what a killed driver leaves, which --resume
        handles. False when the write failed."""
        try:
            write()
        except OSError as err:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                print(f"warning: could not store {what} under {self.describe()} ({type(err).__name__}: "
                      f"{excerpt(str(err).splitlines()[0] if str(err) else '')}); the sweep goes on and stores it "
                      "again at its next change", flush=True)
            return False
        if self._unreachable_since is not None:
            down_s = time.monotonic() - self._unreachable_since
            print(f"storage under {self.describe()} works again after {down_s:.0f} s", flush=True)
            self._unreachable_since = None
        return True

    def read_json(self, file: str, shape: Shape | None = None) -> dict | None:
        """The JSON object in `file` (None when there is none). One UserError when it is not JSON, not an object,
        or not of its `shape` (default: `SHAPES[file]`), naming the file and the fix."""
        data = self.read_bytes(file)
        if data is None:
            return None
        shape = shape or SHAPES.get(file)
        named = f"{shape.what} {self.describe(file)}" if shape else self.describe(file)
        fix = shape.fix if shape else "restore it from a backup, or delete it to continue without it"
        try:
            value = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise UserError(f"{named} is damaged ({type(err).__name__}: {excerpt(str(err))}); {fix}") from None
        if not isinstance(value, dict):
            raise UserError(f"{named} is damaged (not a JSON object); {fix}")
        if shape is not None and not shape.fits(value):
            raise UserError(f"{named} is damaged (not what tuner writes there); {fix}")
        return value

    def age(self, file: str) -> float | None:
        """Seconds since `file` was last written, by this machine's clock; None when the storage does not say."""
        info = self.fs.get_file_info(self.where(file))
        if info.type != pyarrow.fs.FileType.File or info.mtime is None:
            return None
        return time.time() - info.mtime.timestamp()

    def write_json(self, file: str, value: dict) -> None:
        self.write_bytes(file, json.dumps(value, sort_keys=True).encode())

    # --- the Optuna study ----------------------------------------------------------------------

    @property
    def study_path(self) -> Path:
        return self.workdir / STUDY_FILE

    @property
    def study_url(self) -> str:
        return f"sqlite:///{self.study_path}"

    def download_study(self) -> bool:
        """Fetch the stored study into the working copy (False when there is none) and check it opens."""
        data = self.read_bytes(STUDY_FILE)
        if data is None:
            return False
        self.study_path.write_bytes(data)
        check_sqlite(self.study_path, self.describe(STUDY_FILE))
        self._study_stamp = _stamp(self.study_path)
        return True

    def upload_study(self, force: bool = False) -> None:
        """A consistent snapshot of the working copy to storage, when it changed since the last upload."""
        if not self.study_path.is_file():
            return
        stamp = _stamp(self.study_path)
        if not force and stamp == self._study_stamp:
            return
        snapshot = self.workdir / (STUDY_FILE + ".snapshot")
        source = sqlite3.connect(self.study_path)
        try:
            target = sqlite3.connect(snapshot)
            with target:
                source.backup(target)
            target.close()
        finally:
            source.close()
        stored = self.best_effort("the Optuna study", lambda: self.write_bytes(STUDY_FILE, snapshot.read_bytes()))
        snapshot.unlink()
        if stored:
            self._study_stamp = stamp

    def trial_has_checkpoint(self, trial_id: str) -> bool:
        """Whether trial `trial_id` (folder `t007-<id>` of Ray's experiment folder) has a checkpoint folder."""
        try:
            return bool(checkpoint_folders(self.fs, self.experiment_path, trial_id))
        except OSError:
            return True  # cannot tell: keep the trial rather than abandon it

    def checkpoint_files(self, trial_id: str, file_name: str) -> Iterator[tuple[str, bytes]]:
        """(folder, content) of `file_name` in each of the trial's checkpoint folders (`checkpoint_000007`),
        newest first; folders whose file cannot be read are passed over."""
        try:
            folders = sorted(checkpoint_folders(self.fs, self.experiment_path, trial_id), reverse=True)
        except OSError:
            return
        for folder in folders:
            try:
                with self.fs.open_input_stream(f"{folder}/{file_name}") as stream:
                    data = stream.read()
            except OSError:
                continue
            yield folder, data

    def known_sweeps(self) -> list[str]:
        """The sweeps with a space copy under `<storage>/_driver/` (for error messages)."""
        try:
            folders = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.root}/{DRIVER_PREFIX}",
                                                                    allow_not_found=True))
        except OSError:
            return []
        return sorted(f.base_name for f in folders if f.type == pyarrow.fs.FileType.Directory
                      and self.fs.get_file_info(f"{f.path}/{SPACE_COPY}").type == pyarrow.fs.FileType.File)

    # --- digests of Ray's state files ------------------------------------------------------------

    def record_digests(self, folder: Path | None = None, files: dict[str, bytes] | None = None) -> None:
        """Add the digests of Ray's state files in the local `folder` (the driver's staging folder, which
        only this driver writes) and of `files` to `digests.json`; each name keeps its last few versions."""
        found: dict[str, str] = {}
        if folder is not None and folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and STATE_FILE.fullmatch(path.name):
                    found[path.name] = _sha256(path.read_bytes())
        for name, data in (files or {}).items():
            found[name] = _sha256(data)
        if not found:
            return
        digests = self._digests()
        changed = False
        for name, digest in found.items():
            known = digests.setdefault(name, [])
            if digest not in known:
                known.append(digest)
                del known[:-KEEP_DIGESTS]
                changed = True
        if changed:
            self.write_json(DIGESTS, {"sha256": digests})

    def record_ray_file(self, file: str) -> None:
        """Record the digest of a file of Ray's experiment folder that this driver has just written."""
        with self.fs.open_input_stream(f"{self.experiment_path}/{file}") as stream:
            self.record_digests(files={file: stream.read()})

    def _digests(self) -> dict[str, list[str]]:
        stored = self.read_json(DIGESTS)
        return {k: list(v) for k, v in (stored or {}).get("sha256", {}).items()}

    def ray_recorded(self) -> bool:
        """Whether Ray saved a snapshot of this sweep's experiment (experiment_state-*.json): without one, its
        launch failed before Ray recorded anything, and there is nothing to resume."""
        try:
            found = self.fs.get_file_info(pyarrow.fs.FileSelector(self.experiment_path, allow_not_found=True))
        except OSError:
            return True  # the storage cannot say: assume the sweep is there, as a resume would find out
        return any(EXPERIMENT_STATE.fullmatch(info.base_name) for info in found)

    def verify_ray_state(self) -> None:
        """Before Ray reads `<storage>/<sweep>/`: every state file it would unpickle is one this sweep's
        drivers wrote (digest recorded), and the newest experiment state is whole JSON listing trials.
        Sets `expected_trials`. One line and exit 2 otherwise, with nothing read as code."""
        where = join(self.storage_uri, self.name)
        for file, shape in SHAPES.items():  # the driver reads them later, mid-sweep: find damage now
            self.read_json(file, shape)
        digests = self._digests()
        if not digests:
            raise UserError(f"{self.describe(DIGESTS)} is missing: nothing says which of Ray's state files in "
                            f"{where} this sweep's driver wrote, so --resume will not unpickle them; "
                            "start a new sweep (or restore the file from a backup)")
        files = [info for info in self.fs.get_file_info(pyarrow.fs.FileSelector(self.experiment_path))
                 if info.type == pyarrow.fs.FileType.File and info.base_name not in IGNORED_FILES
                 and not info.base_name.endswith("/")]
        states = []
        for info in files:
            with self.fs.open_input_stream(info.path) as stream:
                data = stream.read()
            if _sha256(data) not in digests.get(info.base_name, ()):
                raise UserError(f"{join(where, info.base_name)} was not written by this sweep's driver (its SHA-256 "
                                f"is not in {self.describe(DIGESTS)}): it may have been planted; --resume refuses "
                                "to unpickle it. Delete it (or restore the original) and check who can write "
                                f"{where}")
            if EXPERIMENT_STATE.fullmatch(info.base_name):
                states.append((info.base_name, data))
        if not states:
            raise UserError(f"sweep {self.name} has no Ray experiment state (experiment_state-*.json) in {where}; "
                            "it cannot be resumed")
        newest, data = max(states)  # Ray reads the newest by name (a timestamp)
        try:
            state = json.loads(data)
            trials = [(json.loads(entry[0]), json.loads(entry[1])) for entry in state["trial_data"]]
            self.expected_trials = {trial["trial_id"] for trial, _ in trials}
            self.restored_checkpoints = {
                trial["trial_id"]: run["last_result"]["checkpoint_dir_name"] for trial, run in trials
                if trial.get("status") != "TERMINATED" and isinstance(run.get("last_result"), dict)
                and CHECKPOINT_NAME.fullmatch(str(run["last_result"].get("checkpoint_dir_name")))}
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise UserError(f"Ray's experiment state {join(where, newest)} is damaged ({type(err).__name__}); "
                            f"Ray would start the sweep afresh. Delete that file to resume from the snapshot "
                            "before it, or start a new sweep") from None

    def stand_in_for_deleted_checkpoints(self) -> list[str]:
        """Ray restores an unfinished trial from the checkpoint its last snapshot names, and fails the trial when
        that folder is gone. Its retention (CheckpointConfig.num_to_keep) deletes a trial's older checkpoints as
        newer ones arrive, and a driver killed after such a deletion but before its next snapshot leaves a
        snapshot that names a deleted folder. Each such folder gets a stand-in holding only a note: Ray restores
        from it, and the trial continues from its newest readable checkpoint (tuner.trainable). Call after
        verify_ray_state; returns the trial folders' names with the checkpoint stood in for."""
        if not self.restored_checkpoints:
            return []
        folders = {info.base_name: info.path
                   for info in self.fs.get_file_info(pyarrow.fs.FileSelector(self.experiment_path))
                   if info.type == pyarrow.fs.FileType.Directory}
        made = []
        for trial_id, checkpoint in sorted(self.restored_checkpoints.items()):
            trial_folder = next((path for name, path in folders.items() if name.endswith(f"-{trial_id}")), None)
            if trial_folder is None:
                continue
            path = f"{trial_folder}/{checkpoint}"
            if self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
                continue
            self.fs.create_dir(path, recursive=True)
            with self.fs.open_output_stream(f"{path}/{STAND_IN_NOTE}") as stream:
                stream.write(b"tuner: a stand-in for a checkpoint Ray deleted after its last snapshot named it; "
                             b"the trial continues from its newest readable checkpoint\n")
            made.append(f"{trial_folder.rpartition('/')[2]}/{checkpoint}")
        return made


_states: dict[tuple[str, str], SweepState] = {}
_resumed: dict[str, SweepState] = {}


def open_state(storage: str, name: str) -> SweepState:
    """This process's SweepState of sweep `name` under `storage` (the one working copy of its study). For the
    sweep this driver resumes (`resuming`), another storage is a folder that moved since (see `resuming`)."""
    resumed = _resumed.get(name)
    if resumed is not None and storage != resumed.storage:
        local = "://" not in storage and "://" not in resumed.storage
        if local and Path(storage).resolve() == Path(resumed.storage).resolve():  # reached through a link
            return resumed
        raise UserError(f"sweep {name} ran under {excerpt(storage, 200)}, and Ray's snapshot of it names that "
                        f"folder (it does not follow a move): put the folder back there, or make "
                        f"{excerpt(storage, 200)} a link to {excerpt(resumed.storage, 200)}, then resume")
    key = (storage, name)
    if key not in _states:
        _states[key] = SweepState(storage, name)
    return _states[key]


def resuming(state: SweepState) -> None:
    """This driver resumes `state`'s sweep. Ray unpickles the sweep's bookkeeping with the storage it ran under
    (`SweepState.__reduce__` -> `open_state`), and its trials' storage too: a folder copied or moved since would
    be read and written where it was, and its trials fail to checkpoint. `open_state` refuses that in one line."""
    _resumed[state.name] = state


def resumed_no_more() -> None:
    """Forget the sweep `resuming` named (for a process that runs more than one driver: the tests)."""
    _resumed.clear()


def close_states() -> None:
    """Forget the working copies (their temp folders are removed)."""
    for state in _states.values():
        shutil.rmtree(state.workdir, ignore_errors=True)
    _states.clear()
    resumed_no_more()


def check_sqlite(path: Path, where: str, fix: str = "restore it from a backup, or start a new sweep") -> list[str]:
    """An Optuna study file that SQLite and Optuna can read whole, checked read-only (Optuna writes its schema
    into any database it opens, an empty one included). Returns the names of its studies; one line otherwise."""
    header = sqlite_header(path)
    if header != SQLITE_HEADER:
        what = "empty (0 bytes)" if not header else f"not an SQLite database (it starts with {excerpt(header[:8])})"
        raise UserError(f"the Optuna study {where} is {what}; {fix}")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            # damage past the first page only shows when Optuna reads there, as a traceback: look now
            verdict = connection.execute("pragma quick_check").fetchone()[0]
            tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
            names = [row[0] for row in connection.execute("select study_name from studies")] \
                if "studies" in tables and verdict == "ok" else []
        finally:
            connection.close()
    except sqlite3.DatabaseError as err:
        raise UserError(f"the Optuna study {where} is damaged ({excerpt(str(err), 60)}); {fix}") from None
    if verdict != "ok":
        raise UserError(f"the Optuna study {where} is damaged ({excerpt(verdict, 60)}); {fix}")
    if "studies" not in tables:
        raise UserError(f"the Optuna study {where} has no Optuna tables (no 'studies' table: another SQLite "
                        f"database); {fix}")
    return names


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return excerpt(text[0]) if text else type(err).__name__

"""A sweep's whole state under `--storage s3://...`, against a real S3 server (moto) on loopback.

One tiny sweep (2 trials x 2 epochs, 1 CPU, local Ray): the driver is SIGKILLed after the first trial,
and resumed from a fresh working directory with only --storage and the tracking URI. The same sweep then
checks the resume defences: a finished sweep resumed registers no second model version, a planted
`tuner.pkl` is refused without being unpickled, and a truncated experiment state stops the resume with
one line before anything is written.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port
from tuner.mlflow_store import environment

pytestmark = pytest.mark.integration

MOTO = Path(sys.executable).with_name("moto_server")
REPO = Path(__file__).resolve().parents[1]
BUCKET = "sweeps"
SPACE = """
name: s3tiny
fixed: {batch_size: 50, warmup_epochs: 0, blocks: [1, 1], crop_padding: 2, tta_flip: false, ema_epochs: 0.5,
        widths: [4, 8]}
parameters:
  lr: {type: float, low: 0.01, high: 0.3, log: true}
search: {seed: 5, startup_trials: 2, max_concurrent: 1}
scheduler: {type: fifo, max_epochs: 2}
resources: {cpus: 1, gpus: 0}
budget: {trials: 2}
data: {val_size: 100}
"""


class Planted:
    """Unpickling this writes a marker file: proof that a resume ran code from storage."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path(self.marker).write_text, ("ran",))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port with one bucket; the environment that reaches it."""
    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **env}, start_new_session=True)
    try:
        with environment(**env):
            deadline = time.monotonic() + 60
            while True:
                try:
                    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
                    fs.create_dir(BUCKET)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.5)
            yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def driver(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=cwd, text=True,
                            env={**os.environ, **env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def files(fs: pyarrow.fs.FileSystem, path: str) -> dict[str, pyarrow.fs.FileInfo]:
    return {i.base_name: i for i in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            if i.type == pyarrow.fs.FileType.File}


def test_a_sweep_on_s3_resumes_from_another_machine_and_refuses_damaged_or_planted_state(
        tmp_path: Path, s3: dict[str, str]) -> None:
    storage, name = f"s3://{BUCKET}/ray-results", "s3sweep"
    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    first = tmp_path / "machine-1"
    first.mkdir()
    from tuner.data import write_synthetic_cifar10

    write_synthetic_cifar10(tmp_path / "data", n_train=300, seed=2)
    (first / "space.yaml").write_text(textwrap.dedent(SPACE))
    common = ("--storage", storage, "--mlflow-uri", tracking, "--data-dir", str(tmp_path / "data"))

    # 1. the first driver, killed once one trial has finished
    process = driver(first, s3, "--space", "space.yaml", "--name", name, *common)
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if line.startswith("[1/2]"):
            time.sleep(3)  # past a snapshot of Ray's state
            break
    kill_group(process)
    assert any(line.startswith("[1/2]") for line in seen), "".join(seen[-40:])
    fs, _ = pyarrow.fs.FileSystem.from_uri(storage)
    state = files(fs, f"{BUCKET}/ray-results/_driver/{name}")
    assert {"optuna.db", "budget.json", "space.yaml", "digests.json"} <= set(state), state
    assert not (first / "runs").exists()  # nothing of the sweep on the driver's disk

    # 2. a second machine: a fresh folder, only --storage and the tracking URI
    out, _ = driver(tmp_path / "machine-2", s3, "--resume", name, *common).communicate(timeout=400)
    assert "registered as model version 1" in out, out[-4000:]
    db = tmp_path / "optuna.db"
    with fs.open_input_stream(f"{BUCKET}/ray-results/_driver/{name}/optuna.db") as stream:
        db.write_bytes(stream.read())
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in launched), launched
    client = MlflowClient(tracking)
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  f"tags.`tuner.sweep` = '{name}' and tags.`mlflow.parentRunId` != ''")
    assert sorted(run.data.tags.get("tuner.outcome") for run in children) == ["completed", "completed"]
    for run in children:
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == Counter({1: 1, 2: 1}), steps

    # 3. resuming the finished sweep registers no duplicate model version
    third = driver(tmp_path / "machine-3", s3, "--resume", name, *common)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out[-3000:]
    assert "already registered" in out, out[-3000:]
    from tuner.mlflow_names import DEFAULT_MODEL_NAME

    versions = client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")
    assert [str(v.version) for v in versions if v.tags.get("sweep") == name] == ["1"]

    # 4. a planted tuner.pkl is refused, never unpickled
    experiment = f"{BUCKET}/ray-results/{name}"
    with fs.open_input_stream(f"{experiment}/tuner.pkl") as stream:
        original = stream.read()
    marker = tmp_path / "planted-ran"
    with fs.open_output_stream(f"{experiment}/tuner.pkl") as stream:
        stream.write(pickle.dumps(Planted(str(marker))))
    refused = driver(tmp_path / "machine-4", s3, "--resume", name, *common)
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "tuner.pkl was not written by this sweep's driver" in out, out[-3000:]
    assert not marker.exists()
    with fs.open_output_stream(f"{experiment}/tuner.pkl") as stream:
        stream.write(original)

    # 5. a truncated experiment state stops the resume before anything is written
    newest = max(n for n in files(fs, experiment) if n.startswith("experiment_state-"))
    with fs.open_input_stream(f"{experiment}/{newest}") as stream:
        whole = stream.read()
    with fs.open_output_stream(f"{experiment}/{newest}") as stream:
        stream.write(whole[: len(whole) // 2])
    # its digest must match to get this far: the check for damage is the one that speaks here
    from tuner.sweep_state import SweepState

    SweepState(storage, name).record_ray_file(newest)
    before = files(fs, f"{BUCKET}/ray-results/_driver/{name}")["optuna.db"].mtime
    damaged = driver(tmp_path / "machine-5", s3, "--resume", name, *common)
    out, _ = damaged.communicate(timeout=120)
    assert damaged.returncode == 2 and "is damaged" in out and newest in out, out[-3000:]
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1
    assert files(fs, f"{BUCKET}/ray-results/_driver/{name}")["optuna.db"].mtime == before

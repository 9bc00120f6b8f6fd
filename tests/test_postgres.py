"""The tracking server on PostgreSQL, as in production: a sweep's runs, metrics and model land in the database.

Needs a PostgreSQL database in TUNER_TEST_POSTGRES_URL (postgresql://USER:PASSWORD@127.0.0.1:5432/DB; an
empty one is fine, MLflow creates its tables). `.ci/run` installs PostgreSQL and sets it; elsewhere the test
is skipped. The database may hold earlier runs: this test finds its own by a sweep name of its own.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MlflowServer, free_port
from tests.ray_nodes import RayNode, ray_env, started_head
from tuner.data import write_synthetic_cifar10
from tuner.mlflow_names import DEFAULT_MODEL_NAME
from tuner.tracking import EPOCH_METRICS

POSTGRES_URL = os.environ.get("TUNER_TEST_POSTGRES_URL", "")
# libpq (psycopg2.connect) reads postgresql://; MLflow's SQLAlchemy needs the driver named, as
# cluster/mlflow/mlflow.yaml does: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed here.
LIBPQ_URL = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", POSTGRES_URL)
BACKEND_URI = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg2://", POSTGRES_URL)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not POSTGRES_URL, reason="TUNER_TEST_POSTGRES_URL is not set: export "
                       "postgresql://USER:PASSWORD@HOST:5432/DB to run the PostgreSQL test (.ci/run does)"),
]

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2
SPACE = f"""
name: pg
fixed: {{batch_size: 50, warmup_epochs: 0, blocks: [1, 1], crop_padding: 2, tta_flip: false}}
parameters:
  widths: {{choices: [[4, 8], [8, 16]]}}
  lr: {{type: float, low: 0.01, high: 0.2, log: true}}
search: {{algorithm: random, seed: 0, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: {EPOCHS}}}
resources: {{cpus: 1, gpus: 0}}
budget: {{trials: 3}}
data: {{val_size: 100}}
"""


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server --backend-store-uri postgresql://...` with served artifacts in a temporary folder."""
    import psycopg2  # the driver MLflow's SQLAlchemy store uses for postgresql:// (the `test` extra has it)

    try:
        psycopg2.connect(LIBPQ_URL, connect_timeout=10).close()
    except psycopg2.OperationalError as err:
        pytest.fail(f"TUNER_TEST_POSTGRES_URL is set but the database does not answer: {str(err).strip()}")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-postgres"), free_port())
    server.backend_uri = BACKEND_URI
    server.start()  # runs MLflow's schema migrations on a fresh database
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNode]:
    yield from started_head(tmp_path_factory.mktemp("ray-pg"))


def test_sweep_tracks_runs_metrics_and_model_in_postgres(tmp_path: Path, postgres_mlflow: MlflowServer,
                                                         ray_head: RayNode) -> None:
    import psycopg2

    write_synthetic_cifar10(tmp_path / "data", n_train=600, seed=2)
    (tmp_path / "pg.yaml").write_text(textwrap.dedent(SPACE))
    name = f"pg-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "tuner.run", "--address", ray_head.address, "--mlflow-uri", postgres_mlflow.uri,
               "--storage", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
               "--space", str(tmp_path / "pg.yaml"), "--name", name]
    env = {**ray_env(ray_head.token), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        out, _ = driver.communicate(timeout=360)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, out[-4000:]
    assert "registered as model version" in out

    client = MlflowClient(postgres_mlflow.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`tuner.sweep` = '{name}' and tags.`mlflow.parentRunId` IS NULL")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.metrics["trials"] == 3 and parent.info.status == "FINISHED"
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3
    for run in children:
        assert run.data.tags["tuner.outcome"] == "completed"
        for metric in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == list(range(1, EPOCHS + 1)), f"{metric}: epochs {steps}"
    versions = client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")
    assert any(v.tags.get("sweep") == name for v in versions), "the best checkpoint was not registered"
    assert list(postgres_mlflow.artifacts.rglob("checkpoint.pt")), "no checkpoint among the served artifacts"

    # And it is PostgreSQL that holds them, not some other store the server fell back to.
    child_ids = [run.info.run_id for run in children]
    with psycopg2.connect(LIBPQ_URL) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metrics WHERE run_uuid = ANY(%s) AND key = 'val_acc'", (child_ids,))
        assert cursor.fetchone()[0] == 3 * EPOCHS
        cursor.execute("SELECT count(*) FROM tags WHERE key = 'tuner.sweep' AND value = %s", (name,))
        assert cursor.fetchone()[0] >= 1
    connection.close()

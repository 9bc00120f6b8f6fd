"""Registering a sweep's best checkpoint, promoting versions to champion, predicting with them: real
tiny checkpoints (synthetic CIFAR-10, two trainings of a few seconds) on a real mlflow server."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tuner import predict, promote
from tuner.config import TrainConfig
from tuner.data import LABEL_NAMES, load_splits, load_test, write_synthetic_cifar10
from tuner.evaluate import preprocess
from tuner.tracking import SweepRun, mlflow_globals
from tuner.train import fit

pytestmark = pytest.mark.integration


@dataclass
class Registry:
    uri: str
    client: MlflowClient
    name: str  # registered model name, unique to this module
    bad: str  # version of a barely trained model (sweep `bad_sweep`)
    good: str  # version of a trained model (sweep `good_sweep`)
    bad_sweep: str
    good_sweep: str
    good_val_acc: float
    data_dir: Path  # with test_batch
    no_test_dir: Path  # without


def train_and_register(uri: str, tmp: Path, data, config: TrainConfig, sweep_name: str, model_name: str):
    space = tmp / f"{sweep_name}.yaml"
    space.write_text("parameters: {}\n")
    sweep = SweepRun.start(uri, sweep_name, space, {"num_samples": 1},
                           {"tuner.git_commit": "c0ffee", "tuner.data_fingerprint": data.fingerprint()})
    runs = sweep.trial_runs()
    runs.start("t_0", 0, config)
    result = fit(config, data, lambda m, _: runs.log_epoch("t_0", m.as_dict(), m.epoch), device="cpu")
    runs.finish("t_0", "completed")
    assert runs.flush(timeout_s=60)
    version = sweep.register_best(result.checkpoint, "t_0", result.best.val_acc, model_name=model_name)
    sweep.end()
    return version, result.best.val_acc


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory) -> Registry:
    tmp = tmp_path_factory.mktemp("registry")
    data_dir, no_test_dir = tmp / "data", tmp / "data-no-test"
    write_synthetic_cifar10(data_dir, n_train=600, n_test=200)
    write_synthetic_cifar10(no_test_dir, n_train=600)
    data = load_splits(data_dir, val_size=100)
    suffix = uuid.uuid4().hex[:6]
    name = f"resnet-test-{suffix}"
    base = dict(widths=(8, 16, 32), blocks=(1, 1, 1), batch_size=50, warmup_epochs=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread trains these tiny nets fastest
    try:
        bad, _ = train_and_register(mlflow_server.uri, tmp, data, TrainConfig(**base, lr=1e-5, epochs=1),
                                    f"bad-{suffix}", name)
        good, good_val = train_and_register(mlflow_server.uri, tmp, data, TrainConfig(**base, lr=0.05, epochs=2),
                                            f"good-{suffix}", name)
    finally:
        torch.set_num_threads(threads)
    return Registry(mlflow_server.uri, MlflowClient(mlflow_server.uri), name, bad, good,
                    f"bad-{suffix}", f"good-{suffix}", good_val, data_dir, no_test_dir)


def run_promote(registry: Registry, *args: str, data_dir: Path | None = None) -> None:
    promote.main(["--model-name", registry.name, "--mlflow-uri", registry.uri,
                  "--data-dir", str(data_dir or registry.data_dir), *args])


def champion(registry: Registry) -> str | None:
    try:
        return registry.client.get_model_version_by_alias(registry.name, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def reset_champion(registry: Registry) -> None:
    if champion(registry) is not None:
        registry.client.delete_registered_model_alias(registry.name, "champion")


def user_error(capsys, call) -> str:
    """Run `call`, expect exit 2 and exactly one `error: ...` line on stderr; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_registered_version_carries_lineage_and_predicts_like_the_trained_model(registry):
    version = registry.client.get_model_version(registry.name, registry.good)
    tags = version.tags
    assert tags["sweep"] == registry.good_sweep and tags["trial_id"] == "t_0"
    assert float(tags["val_acc"]) == pytest.approx(registry.good_val_acc, abs=1e-6)
    assert tags["git_commit"] == "c0ffee" and len(tags["data_fingerprint"]) == 16
    assert json.loads(tags["config"])["widths"] == [8, 16, 32]
    assert int(tags["params"]) > 0 and int(tags["macs"]) > 0
    assert tags["checkpoint_uri"].endswith("/checkpoint/checkpoint.pt")
    # no final fit: the version holds the search checkpoint, of the trial's run (tests/test_final_fit.py: with one)
    assert tags["checkpoint_kind"] == "search" and "final_run_id" not in tags
    assert tags["search_trial_id"] == "t_0" and tags["search_run_id"] == tags["run_id"] == version.run_id

    uri = f"models:/{registry.name}/{registry.good}"
    with mlflow_globals(registry.uri):
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    test = load_test(registry.data_dir)
    with torch.no_grad():
        logits = model(preprocess(test.images[:64]))
    assert logits.shape == (64, 10)
    accuracy = (logits.argmax(1).numpy() == test.labels[:64]).mean()
    assert accuracy > 0.15  # trained: well above chance (0.1) on the learnable synthetic classes


def test_champion_moves_only_to_a_better_version_unless_forced(registry, capsys):
    reset_champion(registry)
    run_promote(registry, "--version", registry.bad)
    assert champion(registry) == registry.bad  # no champion before: the first candidate wins
    capsys.readouterr()

    run_promote(registry, "--sweep", registry.good_sweep)
    out = capsys.readouterr().out
    assert champion(registry) == registry.good
    assert "candidate" in out and "champion" in out and "promoted" in out
    tags = registry.client.get_model_version(registry.name, registry.good).tags
    assert float(tags["eval.test_acc"]) > float(
        registry.client.get_model_version(registry.name, registry.bad).tags["eval.test_acc"])
    assert tags["eval.images"] == "200" and len(tags["eval.data_fingerprint"]) == 16

    run_promote(registry, "--version", registry.bad)
    assert "kept" in capsys.readouterr().out
    assert champion(registry) == registry.good

    run_promote(registry, "--version", registry.bad, "--force")
    assert champion(registry) == registry.bad


def test_without_test_split_promotion_needs_allow_val(registry, capsys):
    reset_champion(registry)
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good,
                                                  data_dir=registry.no_test_dir))
    assert "test_batch" in line and "--allow-val" in line
    assert champion(registry) is None

    run_promote(registry, "--version", registry.good, "--allow-val", data_dir=registry.no_test_dir)
    out = capsys.readouterr().out
    assert "no test split" in out and "val_acc" in out
    assert champion(registry) == registry.good


def test_bad_promotion_requests_are_one_line_errors(registry, capsys):
    line = user_error(capsys, lambda: run_promote(registry, "--version", "99"))
    assert "no version 99" in line
    line = user_error(capsys, lambda: promote.main(["--model-name", "no-such-model", "--version", "1",
                                                     "--mlflow-uri", registry.uri]))
    assert "unknown registered model 'no-such-model'" in line
    for bad_name in ("", " ", "a/b", "a:b"):  # names MLflow refuses are a flag mistake, not its traceback
        line = user_error(capsys, lambda name=bad_name: promote.main(["--model-name", name, "--version", "1",
                                                                      "--mlflow-uri", registry.uri]))
        assert line.startswith(f"error: --model-name {bad_name!r} is not a model name (") and registry.name in line
    line = user_error(capsys, lambda: run_promote(registry, "--sweep", "never-ran"))
    assert "sweep 'never-ran' registered no version" in line

    # a version whose run holds no training checkpoint
    client = registry.client
    run = client.create_run(client.get_experiment_by_name("tuner").experiment_id, run_name="not-a-sweep")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(registry.name, source=f"runs:/{run.info.run_id}/model",
                                          run_id=run.info.run_id).version
    line = user_error(capsys, lambda: run_promote(registry, "--version", version))
    assert f"version {version}" in line and "no training checkpoint" in line


def test_predict_prints_label_and_probability_per_image(registry, tmp_path, capsys):
    test = load_test(registry.data_dir)
    png, jpeg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(test.images[0]).save(png)
    Image.fromarray(test.images[1]).resize((64, 48)).save(jpeg, quality=95)  # not 32x32: resized
    registry.client.set_registered_model_alias(registry.name, "champion", registry.good)
    result = subprocess.run(
        [sys.executable, "-m", "tuner.predict", str(png), str(jpeg),
         "--model-uri", f"models:/{registry.name}@champion", "--mlflow-uri", registry.uri],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"= version {registry.good} of {registry.name}" in result.stderr  # what @champion resolved to
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, (png, jpeg)):
        shown_path, label, probability = line.split()
        assert shown_path == str(path) and label in LABEL_NAMES and 0.1 <= float(probability) <= 1.0

    # an unreadable file is reported on stderr; the others are still classified; exit code 1
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(png), str(text), str(jpeg), "--model-uri", f"models:/{registry.name}@champion",
                      "--mlflow-uri", registry.uri, "--top-k", "3"])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.strip().splitlines()] == [str(png), str(jpeg)]
    assert len(out.splitlines()[0].split()) == 1 + 2 * 3  # path, then three (label, probability) pairs
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        line for line in err.splitlines() if str(text) in line and "not an image" in line]

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(text), str(png), "--json", "--top-k", "2", "--model-uri",
                      f"models:/{registry.name}@champion", "--mlflow-uri", registry.uri])
    assert exit_info.value.code == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_version"]["version"] == registry.good
    bad, good = answer["images"]
    assert bad["path"] == str(text) and "not an image" in bad["error"]
    assert good["label"] in LABEL_NAMES and len(good["top_k"]) == 2
    assert good["top_k"][0]["probability"] >= good["top_k"][1]["probability"]

    with pytest.raises(SystemExit) as exit_info:  # nothing could be classified: bad input, as a bad flag
        predict.main([str(text), str(tmp_path), "--model-uri", f"models:/{registry.name}@champion",
                      "--mlflow-uri", registry.uri])
    assert exit_info.value.code == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]) == 2

    line = user_error(capsys, lambda: predict.main([str(png), "--top-k", "11", "--mlflow-uri", registry.uri]))
    assert "--top-k" in line

    line = user_error(capsys, lambda: predict.main([str(png), "--model-uri", f"models:/{registry.name}@nobody",
                                                    "--mlflow-uri", registry.uri]))
    assert "cannot load model" in line


def test_a_driver_with_cuda_checks_the_input_example_on_the_cpu(mlflow_server, tmp_path, monkeypatch):
    # On a GPU driver MLflow validated the example by loading the model on CUDA, where a pt2 program
    # exported on the CPU cannot go: it logged "Failed to validate serving input example" (H200, 2026-11-26).
    write_synthetic_cifar10(tmp_path / "data", n_train=200)
    data = load_splits(tmp_path / "data", val_size=50)
    config = TrainConfig(widths=(8, 16, 32), blocks=(1, 1, 1), batch_size=50, warmup_epochs=0.0, epochs=1)
    suffix = uuid.uuid4().hex[:6]
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("mlflow").addHandler(handler)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what MLflow asks to pick the device
    try:  # training itself is pinned to the CPU
        version, _ = train_and_register(mlflow_server.uri, tmp_path, data, config, f"cuda-{suffix}",
                                        f"resnet-cuda-{suffix}")
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    assert version == "1"
    assert not [w for w in warnings if "input example" in w], warnings


def test_classify_matches_argmax_of_the_network():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    indices, probabilities = predict.classify(model, images, tta_flip=False)
    with torch.no_grad():
        expected = torch.softmax(model(preprocess(images)), 1)
    assert (indices == expected.argmax(1).numpy()).all()
    assert np.allclose(probabilities, expected.max(1).values.numpy(), atol=1e-6)

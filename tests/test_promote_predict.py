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

from tests.store_proxy import StoreProxy, run_with_one_attempt
from tuner import predict, promote
from tuner.config import TrainConfig
from tuner.data import LABEL_NAMES, load_splits, load_test, write_synthetic_cifar10
from tuner.errors import UserError
from tuner.evaluate import preprocess
from tuner.mlflow_store import mlflow_globals
from tuner.tracking import SweepRun
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


# --- robustness: damaged checkpoints, models, tags and data are one-line errors; a failed promote changes nothing


def tiny_checkpoint(widths: tuple[int, int, int] = (8, 16, 32)) -> dict:
    """A checkpoint as `fit` writes it, of an untrained tiny network: every key resuming restores."""
    from tuner.model import build_model

    config = TrainConfig(widths=widths, blocks=(1, 1, 1), batch_size=50, warmup_epochs=0.0, epochs=1)
    model = build_model(config)
    return {"format": 1, "config": config.to_dict(), "epoch": 1, "model": model.state_dict(),
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
            "schedule": {"scale": 1.0, "best": 0.0, "bad": 0},
            "rng": {"generator": torch.Generator().get_state(), "torch": torch.get_rng_state()}, "history": []}


def test_checkpoint_contents_that_do_not_fit_are_one_error_naming_it(tmp_path):
    from tuner.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from tuner.errors import UserError

    whole = tiny_checkpoint()
    model_from_checkpoint(whole)
    load_checkpoint(save_checkpoint(whole, tmp_path / "whole.pt"), resumable=True)
    cut = {**whole, "model": dict(list(whole["model"].items())[:-3])}
    widened = {**whole, "config": {**whole["config"], "widths": [16, 16, 16]}}
    for label, state in (("cut", cut), ("emptied", {**whole, "model": {}}), ("widened", widened),
                         ("not a dict", {**whole, "model": [1, 2]})):
        with pytest.raises(UserError) as error:
            model_from_checkpoint(state, f"checkpoint {label}.pt")
        message = str(error.value)
        assert len(message.splitlines()) == 1 and message.startswith(f"checkpoint {label}.pt: its 'model' weights"), \
            message
        assert "do not fit" in message and "give a checkpoint written by tuner" in message
        with pytest.raises(UserError, match=f"checkpoint {label}.pt"):  # resuming checks the same
            load_checkpoint(save_checkpoint(state, tmp_path / f"{label}.pt"), f"checkpoint {label}.pt",
                            resumable=True)
    for key in ("optimizer", "schedule", "rng", "history", "epoch"):
        path = save_checkpoint({k: v for k, v in whole.items() if k != key}, tmp_path / f"no-{key}.pt")
        load_checkpoint(path)  # readable: its weights still predict
        with pytest.raises(UserError, match=f"no-{key}.pt cannot be resumed: it has no '{key}'.*without --resume"):
            load_checkpoint(path, resumable=True)
    other_optimizer = {**whole, "optimizer": {"state": {}, "param_groups": [{"params": [0, 1]}]}}
    with pytest.raises(UserError, match="'optimizer' state does not match"):
        load_checkpoint(save_checkpoint(other_optimizer, tmp_path / "opt.pt"), resumable=True)


def test_evaluating_on_no_images_is_a_user_error():
    from tuner.data import ImageSet
    from tuner.errors import UserError
    from tuner.evaluate import evaluate_images

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    empty = ImageSet(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(UserError, match="0 images"):
        evaluate_images(model, empty, device="cpu")


def register_checkpoint(registry: Registry, content: bytes, tmp_path: Path) -> str:
    """A new version of the registry's model whose run holds `content` as its training checkpoint."""
    client = registry.client
    run = client.create_run(client.get_experiment_by_name("tuner").experiment_id, run_name="hand-made")
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(content)
    client.log_artifact(run.info.run_id, str(folder / "checkpoint.pt"), "checkpoint")
    client.set_terminated(run.info.run_id)
    return client.create_model_version(registry.name, source=f"runs:/{run.info.run_id}/model",
                                       run_id=run.info.run_id).version


def good_checkpoint(registry: Registry, tmp_path: Path) -> dict:
    uri = registry.client.get_model_version(registry.name, registry.good).tags["checkpoint_uri"]
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path), tracking_uri=registry.uri)
    return torch.load(path, weights_only=True)


def saved(state: dict, tmp_path: Path) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.pt"
    torch.save(state, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def broken_versions(registry, tmp_path_factory) -> dict[str, str]:
    """Versions of the registry's model whose checkpoints are damaged, by kind of damage."""
    tmp = tmp_path_factory.mktemp("broken")
    whole = good_checkpoint(registry, tmp)
    whole_bytes = saved(whole, tmp)
    contents = {
        "truncated": whole_bytes[: len(whole_bytes) // 2],
        "zero-byte": b"",
        "cut": saved({**whole, "model": dict(list(whole["model"].items())[:-4])}, tmp),
        "widened": saved({**whole, "config": {**whole["config"], "widths": [16, 16, 32]}}, tmp),
    }
    return {kind: register_checkpoint(registry, content, tmp) for kind, content in contents.items()}


def test_a_damaged_candidate_checkpoint_is_one_line_naming_its_version(registry, broken_versions, capsys):
    reset_champion(registry)
    for kind, version in broken_versions.items():
        line = user_error(capsys, lambda v=version: run_promote(registry, "--version", v))
        assert f"version {version} of '{registry.name}'" in line and "runs:/" in line, (kind, line)
        assert "/tmp" not in line and "--version" in line, (kind, line)
        assert "loading state_dict" not in line and "KeyError" not in line, (kind, line)
        assert not any(key.startswith("eval.") for key in
                       registry.client.get_model_version(registry.name, version).tags), kind
    assert champion(registry) is None


def test_a_failed_promote_changes_nothing_and_force_keeps_the_lineage(registry, broken_versions, capsys):
    client, broken = registry.client, broken_versions["truncated"]
    client.set_registered_model_alias(registry.name, "champion", broken)
    for key in list(client.get_model_version(registry.name, registry.good).tags):
        if key.startswith(("eval.", "promoted.")):
            client.delete_model_version_tag(registry.name, registry.good, key)
    before = client.get_model_version(registry.name, registry.good).tags
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good))
    assert f"cannot evaluate the current champion (version {broken})" in line and "--force" in line
    assert client.get_model_version(registry.name, registry.good).tags == before  # no eval.* written
    assert champion(registry) == broken

    run_promote(registry, "--version", registry.good, "--force")
    out, err = capsys.readouterr()
    assert champion(registry) == registry.good
    assert f"replaced version {broken}, which could not be evaluated" in out and "no champion before" not in out
    tags = client.get_model_version(registry.name, registry.good).tags
    assert tags["promoted.over"] == str(broken) and "eval.test_acc" in tags
    assert "Downloading artifacts" not in err and "%|" not in err  # MLflow's progress bars are off


def test_a_val_acc_tag_that_is_not_a_number_is_one_line(registry, capsys):
    reset_champion(registry)
    client = registry.client
    original = client.get_model_version(registry.name, registry.good).tags["val_acc"]
    try:
        for bad in ("abc", "nan", "7"):
            client.set_model_version_tag(registry.name, registry.good, "val_acc", bad)
            line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good, "--allow-val",
                                                          data_dir=registry.no_test_dir))
            assert f"version {registry.good} of '{registry.name}' has tag val_acc='{bad}'" in line
        # the same tag on the champion: refused without --force, replaced (and recorded) with it
        client.set_registered_model_alias(registry.name, "champion", registry.good)
        line = user_error(capsys, lambda: run_promote(registry, "--version", registry.bad, "--allow-val",
                                                      data_dir=registry.no_test_dir))
        assert "cannot evaluate the current champion" in line and "val_acc='7'" in line
        assert champion(registry) == registry.good
    finally:
        client.set_model_version_tag(registry.name, registry.good, "val_acc", original)


def test_val_accuracies_measured_on_other_images_are_not_compared(registry, capsys):
    reset_champion(registry)
    client = registry.client
    original = client.get_model_version(registry.name, registry.good).tags["data_fingerprint"]
    try:
        client.set_model_version_tag(registry.name, registry.good, "data_fingerprint", "0123456789abcdef")
        client.set_registered_model_alias(registry.name, "champion", registry.good)
        line = user_error(capsys, lambda: run_promote(registry, "--version", registry.bad, "--allow-val",
                                                      data_dir=registry.no_test_dir))
        assert "cannot evaluate the current champion" in line and "data fingerprint 0123456789abcdef" in line
        assert champion(registry) == registry.good
    finally:
        client.set_model_version_tag(registry.name, registry.good, "data_fingerprint", original)


def test_bad_test_data_is_one_line(registry, tmp_path, capsys):
    import pickle

    empty = tmp_path / "empty" / "cifar-10-batches-py"
    empty.mkdir(parents=True)
    with open(empty / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good, data_dir=empty.parent))
    assert "holds 0 images" in line and "test_batch" in line

    garbage = tmp_path / "garbage" / "cifar-10-batches-py"
    garbage.mkdir(parents=True)
    (garbage / "test_batch").write_bytes(b"\x00not a pickle")
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good, data_dir=garbage.parent))
    assert "test_batch" in line and "run again to download" not in line  # promote never downloads

    a_file = tmp_path / "smoke.yaml"
    a_file.write_text("parameters: {}\n")
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good, data_dir=a_file))
    assert f"--data-dir {a_file} is a file, not a folder" in line
    line = user_error(capsys, lambda: run_promote(registry, "--version", registry.good,
                                                  data_dir=tmp_path / "nowhere"))
    assert f"--data-dir {tmp_path / 'nowhere'} does not exist" in line and "--allow-val" in line


def test_predict_says_what_is_wrong_with_a_model_or_image_path(registry, tmp_path, capsys, monkeypatch):
    png = tmp_path / "a.png"
    Image.fromarray(load_test(registry.data_dir).images[0]).save(png)
    with mlflow_globals(registry.uri):  # models:/ resolves through the registry URI
        model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{registry.name}/{registry.good}",
                                                             dst_path=str(tmp_path / "model")))
    weights = next((model_dir / "data").glob("model.*"))

    def predict_line(model_uri: str | Path, *images: Path) -> str:
        return user_error(capsys, lambda: predict.main([*(str(i) for i in images or (png,)), "--model-uri",
                                                        str(model_uri), "--mlflow-uri", registry.uri]))

    # the model's files cannot be loaded: one line naming the URI, whatever the loader raised
    weights.write_bytes(weights.read_bytes()[:1000])
    line = predict_line(model_dir)
    assert f"cannot load model {model_dir}: its files are damaged" in line and "promote another version" in line
    (model_dir / "MLmodel").write_text("flavors: [unclosed\n  : -\n")
    line = predict_line(model_dir)
    assert f"cannot load model {model_dir}: its files are damaged" in line and "Error" in line

    # not an MLflow model at all: say so, and what --model-uri takes
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(tiny_checkpoint(), checkpoint)
    state_dict = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), state_dict)
    folder = tmp_path / "photos"
    folder.mkdir()
    for not_a_model in (checkpoint, state_dict, folder):
        line = predict_line(not_a_model)
        assert f"--model-uri {not_a_model} is a" in line and "not an MLflow model folder" in line
        assert "models:/" in line and "MLmodel" in line
    line = predict_line(f"runs:/{registry.client.get_model_version(registry.name, registry.good).run_id}/checkpoint")
    assert "not an MLflow model (no MLmodel file there)" in line
    for web in ("https://models.example.org/resnet", "HTTP://127.0.0.1:1/model"):  # no artifact proxy: not read
        line = predict_line(web)
        assert f"--model-uri '{web}' is a web address" in line and "mlflow-artifacts" in line and "models:/" in line

    # image paths: a folder, and an image too large to decode safely
    line = predict_line(model_dir, tmp_path)
    assert f"{tmp_path}: is a folder" in line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 = 1024 pixels > twice the limit
    line = predict_line(model_dir, png)
    assert "the image is too large (1,024 pixels" in line and "PNG or JPEG" not in line


def test_a_resumed_driver_finds_the_version_its_killed_predecessor_registered(registry: Registry, tmp_path) -> None:
    """A driver killed after MLflow created the version but before the sweep recorded it (registered.json):
    the next driver's registration returns that version instead of registering the champion again."""
    space = tmp_path / "space.yaml"
    space.write_text("parameters: {}\n")
    before = {v.version for v in registry.client.search_model_versions(f"name = '{registry.name}'")}
    sweep = SweepRun.start(registry.uri, registry.good_sweep, space, {"num_samples": 1}, {})
    try:
        version = sweep.register_best({}, "t_0", registry.good_val_acc, model_name=registry.name)
    finally:
        sweep.end()
    assert version == registry.good
    assert {v.version for v in registry.client.search_model_versions(f"name = '{registry.name}'")} == before


def one_line(done: subprocess.CompletedProcess) -> str:
    """The one error line of a command that exited 2 (predict says first which version it resolved)."""
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0], (done.returncode, lines)
    return errors[0]


def refusing(method: str, fragment: str):  # noqa: ANN201 - a StoreProxy refusal
    return lambda m, path: 503 if m == method and fragment in path else None


@pytest.mark.parametrize("down", ["checkpoint download", "alias move"])
def test_a_store_that_stops_answering_during_promote_is_one_line_and_moves_nothing(registry, down: str):
    """While promote fetches the checkpoints (before, an outage there read as "has no training checkpoint"),
    or when it moves the alias: one line naming the store and the outage, the champion as it was; once the
    store answers again, the same command promotes."""
    registry.client.set_registered_model_alias(registry.name, "champion", registry.bad)
    for number in (registry.bad, registry.good):  # no evaluation recorded by earlier tests: both are fetched
        for key in list(registry.client.get_model_version(registry.name, number).tags):
            if key.startswith("eval."):
                registry.client.delete_model_version_tag(registry.name, number, key)
    refusal = (refusing("GET", "/mlflow-artifacts/artifacts") if down == "checkpoint download" else
               refusing("POST", "/registered-models/alias"))
    argv = ["tuner.promote", "--model-name", registry.name, "--version", registry.good,
            "--data-dir", str(registry.data_dir)]
    with StoreProxy(registry.uri, refusal) as store:
        line = one_line(run_with_one_attempt(*argv, "--mlflow-uri", store.uri))
    assert store.refusals >= 1
    assert line.startswith(f"error: the tracking store {store.uri} stopped answering while promoting a version "
                           f"of '{registry.name}' (HTTP 503); the 'champion' alias moves only after"), line
    assert champion(registry) == registry.bad
    done = run_with_one_attempt(*argv, "--mlflow-uri", registry.uri)
    assert done.returncode == 0, done.stderr
    assert champion(registry) == registry.good


def test_a_store_that_stops_answering_while_predict_loads_the_model_is_one_line(registry, tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(load_test(registry.data_dir).images[0]).save(png)
    registry.client.set_registered_model_alias(registry.name, "champion", registry.good)
    model_uri = f"models:/{registry.name}@champion"
    with StoreProxy(registry.uri, refusing("GET", "/mlflow-artifacts/artifacts")) as store:
        line = one_line(run_with_one_attempt("tuner.predict", str(png), "--model-uri", model_uri,
                                             "--mlflow-uri", store.uri))
    assert store.refusals >= 1
    assert line.startswith(f"error: the tracking store {store.uri} stopped answering while loading model "
                           f"{model_uri} (HTTP 503)"), line


def test_a_damaged_model_file_is_the_only_line_on_stderr(registry, tmp_path):
    """torch.export logs a damaged program's traceback as warnings before it raises; predict says it in one line,
    and that line is all of stderr (the process imports torch itself: its logger levels are set again there)."""
    png = tmp_path / "a.png"
    Image.fromarray(load_test(registry.data_dir).images[0]).save(png)
    with mlflow_globals(registry.uri):
        model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{registry.name}/{registry.good}",
                                                             dst_path=str(tmp_path / "model")))
    weights = model_dir / "data" / "model.pt2"
    weights.write_bytes(weights.read_bytes()[:3000])
    done = run_with_one_attempt("tuner.predict", str(png), "--model-uri", str(model_dir))
    assert done.stderr.strip().splitlines() == [one_line(done)]
    assert f"cannot load model {model_dir}: its files are damaged or incomplete" in done.stderr


def test_a_missing_test_split_is_said_once(tmp_path: Path, capsys) -> None:
    """Without --allow-val the error line says it all (a bare `no test split` line before it said it twice);
    with it, the note says what the comparison falls back from."""
    with pytest.raises(UserError, match="no test split") as err:
        promote.test_split(tmp_path / "none", allow_val=False)
    assert "--allow-val" in str(err.value)
    assert capsys.readouterr().out == ""
    assert promote.test_split(tmp_path / "none", allow_val=True) is None
    assert capsys.readouterr().out.startswith("no test split: --data-dir")

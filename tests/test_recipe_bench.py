"""The recipe benchmarks run as documented: bench/recipe_candidates.py, bench/proxy_accuracy.py's per-epoch
record, and bench/gpu_acceptance.sh's CPU smoke (so a GPU lease is never spent on a typo). Synthetic data,
tiny networks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuner.data import write_synthetic_cifar10

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--widths", "8,16,32", "--device", "cpu", "--val-size", "40"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=400, seed=0)
    return root


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the scripts import their neighbour `machine`
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_candidates_table_scores_each_change_and_reuses_the_default_for_evaluation_only_ones(
    data_dir: Path, tmp_path: Path, bench: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import recipe_candidates

    out = tmp_path / "candidates.json"
    recipe_candidates.main(["--data-dir", str(data_dir), *TINY, "--epochs", "1", "--subset", "64",
                            "--only", "default,tta-translate-1,combo", "--json", str(out),
                            "--set", "combo:zero_init_residual=true,alternate_flip=true"])
    document = json.loads(out.read_text())
    results = document["results"]
    assert list(results) == ["default", "tta-translate-1", "combo"]
    assert results["tta-translate-1"]["scored_on"] == "the default's final weights"  # not trained again
    assert results["combo"]["changes"] == {"zero_init_residual": "true", "alternate_flip": "true"}
    assert len(results["combo"]["val_acc_per_epoch"]) == 1
    assert document["settings"]["train_images"] == 64 and document["machine"]["cpu"]
    table = capsys.readouterr().out
    assert "tta_translate=1 [the default's final weights]" in table and "(the default)" in table


def test_candidates_refuse_an_unknown_name_or_field_before_training(data_dir: Path, bench: None) -> None:
    import recipe_candidates

    with pytest.raises(SystemExit):
        recipe_candidates.main(["--data-dir", str(data_dir), *TINY, "--only", "defualt"])
    with pytest.raises(SystemExit) as caught:
        recipe_candidates.main(["--data-dir", str(data_dir), *TINY, "--only", "x", "--set", "x:zero_init=true"])
    assert caught.value.code == 2  # a UserError naming the field, before any data is read


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_report_recipe_records_validation_accuracy_per_epoch(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = run_script(sys.executable, "bench/proxy_accuracy.py", "--data-dir", str(data_dir), *TINY,
                        "--recipe", "report", "--epochs", "2", "--subset", "all", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report: dict[str, Any] = json.loads(out.read_text())["results"]["report"]
    assert report["epochs_run"] == 2 and len(report["val_acc_per_epoch"]) == 2
    assert report["final_val_acc"] == report["val_acc_per_epoch"][-1]
    assert report["config"]["optimizer"] == "adam" and report["config"]["schedule"] == "plateau"
    assert json.loads(out.read_text())["settings"]["train_images"] == 360  # --subset all: 400 - 40 val


def test_gpu_acceptance_script_runs_end_to_end_in_its_cpu_smoke(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_script("bash", "bench/gpu_acceptance.sh", "--cpu-smoke", "--data-dir", str(data_dir),
                        "--val-size", "40", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"report.json", "report.log", "candidates-a.json", "candidates-a.log",
                                               "candidates-b.json", "candidates-b.log", "summary.txt"}
    summary = (out / "summary.txt").read_text()
    assert "report recipe, 1 epochs: final val acc" in summary
    import_names = json.loads((out / "candidates-a.json").read_text())["results"].keys()
    import_names |= json.loads((out / "candidates-b.json").read_text())["results"].keys()
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from recipe_candidates import CANDIDATES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert import_names == set(CANDIDATES)  # every candidate of the table, split across the two processes
    for name in CANDIDATES:
        assert name in summary

"""Sweeps as a user runs them: summary table, failure isolation, and the same result under every launcher."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import onnx
import pytest

from onnxbuild.artifacts import file_sha256
from tests.conftest import run_cli

TINY = ["model=tiny_cnn", "input=image32"]
# One good job and one the model rejects (1 channel into a 3-channel conv).
FAILING_SWEEP = ["-m", "opset=18", *TINY, "input.inputs.0.shape=[2,3,32,32],[2,1,32,32]"]
LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local"],
}


def sweep_dir(root: Path) -> Path:
    [path] = (root / "outputs" / "multirun").glob("*/*")
    return path


def summary_rows(root: Path) -> list[dict[str, str]]:
    with open(sweep_dir(root) / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Everything but timings (and the cache column, which depends on what ran before)."""
    return [{k: v for k, v in row.items() if k not in ("build_seconds", "cache_hits")} for row in rows]


def test_opset_sweep_gives_validated_run_dirs_and_summary(tmp_path: Path) -> None:
    proc = run_cli(["-m", "opset=17,18,19", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = sweep_dir(tmp_path)
    rows = summary_rows(tmp_path)
    assert [r["opset"] for r in rows] == ["17", "18", "19"]
    for row in rows:
        run_dir = root / row["run_dir"]
        assert row["status"] == "ok" and not row["stage"] and not row["reason"]
        assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
        assert json.loads((run_dir / "report.json").read_text())["validation"]["passed"]
        model = onnx.load(str(run_dir / "model.onnx"))
        assert next(o.version for o in model.opset_import if o.domain == "") == int(row["opset"])
        assert row["sha256"] == file_sha256(run_dir / "model.onnx")
        assert int(row["size_bytes"]) == (run_dir / "model.onnx").stat().st_size
        assert int(row["nodes"]) == len(model.graph.node)
        assert 0 <= float(row["max_abs_error"]) <= 1e-4 and float(row["build_seconds"]) > 0
        assert row["inputs"] == "input[batch(1..16),3,32,32]"
    md = (root / "summary.md").read_text()
    assert "3 jobs, 3 ok, 0 failed" in md
    assert "| opset=17 | ok |" in md and md.splitlines()[-1] in proc.stdout  # printed at the end


@pytest.fixture(scope="module")
def basic_failing_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("basic")
    return root, run_cli(FAILING_SWEEP, cwd=root)


def check_failing_sweep(root: Path, proc) -> list[dict[str, str]]:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = summary_rows(root)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    good, bad = rows
    assert (sweep_dir(root) / good["run_dir"] / "model.onnx").is_file()
    assert bad["stage"] == "capture"
    assert "input.inputs" in bad["reason"] and "channels" in bad["reason"]
    assert not (sweep_dir(root) / bad["run_dir"] / "model.onnx").exists()
    assert "| FAILED | capture |" in proc.stdout
    assert "sweep job 1 failed [capture]" in proc.stderr and "1 of 2 sweep jobs failed" in proc.stderr
    return rows


def test_failing_job_does_not_stop_the_sweep(basic_failing_sweep) -> None:
    check_failing_sweep(*basic_failing_sweep)


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_same_summary_under_parallel_launchers(launcher: str, tmp_path: Path, basic_failing_sweep) -> None:
    proc = run_cli([*FAILING_SWEEP, *LAUNCHERS[launcher]], cwd=tmp_path)
    rows = check_failing_sweep(tmp_path, proc)
    basic_root, _ = basic_failing_sweep
    assert comparable(rows) == comparable(
        summary_rows(basic_root)
    )  # same sha256s: reproducible across processes
    for row in rows:  # the job ran in another process: its status is on disk, not in our memory
        status = json.loads((sweep_dir(tmp_path) / row["run_dir"] / "status.json").read_text())
        assert status["status"] == row["status"]


@pytest.mark.slow
def test_sweep_opsets_preset_on_tiny_cnn(tmp_path: Path) -> None:
    proc = run_cli(["+sweep=opsets", *TINY, *LAUNCHERS["joblib"]], cwd=tmp_path)
    rows = summary_rows(tmp_path)
    assert sorted(int(r["opset"]) for r in rows) == list(range(17, 24))
    for row in rows:  # each opset builds, or the summary names the stage and reason
        assert row["status"] == "ok" or (row["stage"] and row["reason"]), row
    assert proc.returncode == (0 if all(r["status"] == "ok" for r in rows) else 1), proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="hydra-ray-launcher not installed (pip install 'onnxbuild[ray]')",
)
def test_same_summary_under_ray(tmp_path: Path, basic_failing_sweep) -> None:
    ray = [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
    ]
    proc = run_cli([*FAILING_SWEEP, *ray], cwd=tmp_path)
    rows = check_failing_sweep(tmp_path, proc)
    assert comparable(rows) == comparable(summary_rows(basic_failing_sweep[0]))


@pytest.mark.slow
def test_killed_job_is_reported_with_its_stage(tmp_path: Path) -> None:
    # Job 1's process dies without an exception (like a segfault): submitit reports it lost and
    # Hydra aborts the sweep; the summary still shows job 0 built and job 1 stopped in capture.
    models = "model._target_=onnxbuild.zoo.TinyCNN,tests.models.HardExit"
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "model=custom",
        "allowed_target_prefixes=[tests.]",
        "input=image32",
    ]
    proc = run_cli([*args, models], cwd=tmp_path)
    assert proc.returncode != 0
    good, killed = summary_rows(tmp_path)
    assert good["status"] == "ok"
    assert (killed["status"], killed["stage"]) == ("failed", "capture")
    assert "did not finish" in killed["reason"]
    assert "sweep was aborted" in proc.stderr

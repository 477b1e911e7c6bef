"""benchmarks/coverage.py: the job list and how a run directory becomes a table row."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("coverage_bench", REPO / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(spec)
sys.modules["coverage_bench"] = coverage  # dataclasses look their module up while being created
spec.loader.exec_module(coverage)


def test_jobs_cover_every_torchvision_classification_and_segmentation_model() -> None:
    from onnxbuild.torchvision_zoo import classification_archs, segmentation_archs

    jobs = coverage.torchvision_jobs()
    names = [j.model for j in jobs]
    assert set(names) == set(classification_archs()) | set(segmentation_archs())
    assert len(names) == len(set(names))
    params = [j.params for j in jobs if j.params is not None]
    assert params == sorted(params)  # small models first
    assert {j.model for j in coverage.hf_jobs()} == {"bert_tiny", "gpt2_tiny", "vit_tiny", "minilm"}


def fake_run(run_dir: Path, report: dict, validation: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(json.dumps(report))
    if validation is not None:
        (run_dir / "validation.json").write_text(json.dumps(validation))


def test_rows_from_a_passing_and_a_failing_run(tmp_path: Path) -> None:
    job = coverage.Job("m", "torchvision", [], "1..2x3x64x64")
    done = subprocess.CompletedProcess([], 0, "", "")
    fake_run(
        tmp_path / "ok",
        {
            "status": "ok",
            "error": None,
            "stages": [
                {"name": "capture", "status": "ok", "seconds": 1.5, "info": {}},
                {"name": "convert", "status": "ok", "seconds": 2.0, "info": {"nodes": 90}},
                {"name": "simplify", "status": "ok", "seconds": 1.0, "info": {"nodes": 60}},
            ],
        },
        {"max_abs_error": 2e-6, "degenerate_outputs": ["aux"]},
    )
    row = coverage.row_from_run(job, tmp_path / "ok", done, 9.0)
    assert (row.status, row.export_s, row.nodes, row.max_abs_error, row.degenerate_reference) == (
        "ok",
        3.5,
        60,
        2e-6,
        "aux",
    )

    fake_run(
        tmp_path / "bad",
        {
            "status": "failed",
            "error": {"stage": "convert", "message": "no\ntranslation"},
            "stages": [{"name": "capture", "status": "ok", "seconds": 1.0}],
        },
    )
    row = coverage.row_from_run(job, tmp_path / "bad", subprocess.CompletedProcess([], 1, "", ""), 3.0)
    assert (row.status, row.failed_stage, row.reason) == ("failed", "convert", "no translation")

    row = coverage.row_from_run(job, tmp_path / "none", None, 60)
    assert row.status == "timeout"
    crashed = subprocess.CompletedProcess([], -9, "", "")
    assert coverage.row_from_run(job, tmp_path / "none", crashed, 5).status == "crashed"


def test_tables_are_written_and_read_back(tmp_path: Path) -> None:
    rows = [
        coverage.Row(
            "a", "torchvision", "ok", export_s=1.0, nodes=3, max_abs_error=1e-6, degenerate_reference="no"
        ),
        coverage.Row("b", "hf-config", "failed", failed_stage="capture", reason="x | y"),
    ]
    coverage.write_tables(rows, tmp_path, total_jobs=3, started="now")
    text = (tmp_path / "coverage.md").read_text()
    assert "Partial: 2 of 3" in text and "x \\| y" in text
    back = coverage.read_rows(tmp_path / "coverage.csv")
    assert [(r.model, r.status, r.nodes) for r in back] == [("a", "ok", 3), ("b", "failed", None)]

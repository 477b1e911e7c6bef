"""The optional benchmark stage: timings of the validated model, never cached, never in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxbuild.errors import ConfigError, ValidationFailed
from onnxbuild.pipeline import run_build
from tests.conftest import TINY, compose_config

FAST = ["benchmark.enabled=true", "benchmark.warmup=1", "benchmark.iterations=3"]


def test_benchmark_times_onnxruntime_and_eager_and_stays_out_of_the_manifest(tmp_path: Path) -> None:
    cache = f"cache.root={tmp_path / 'cache'}"
    plain = run_build(compose_config([*TINY, cache]), tmp_path / "plain")
    first = run_build(compose_config([*TINY, cache, *FAST]), tmp_path / "a")
    bench = json.loads((tmp_path / "a" / "benchmark.json").read_text())
    assert [r["shape_set"] for r in bench["results"]] == ["example", "max"]
    assert [r["input_shapes"]["input"][0] for r in bench["results"]] == [2, 16]
    for result in bench["results"]:
        assert result["onnxruntime"]["p50_ms"] > 0 and result["eager"]["p50_ms"] > 0
        assert (
            result["onnxruntime"]["min_ms"]
            <= result["onnxruntime"]["p50_ms"]
            <= result["onnxruntime"]["p90_ms"]
        )
    assert first.report["benchmark"] == bench
    from onnxbuild.sweep import _latency  # the sweep summary's p50 column

    assert _latency(first.report) == bench["results"][0]["onnxruntime"]["p50_ms"]
    # Timings vary: same manifest as the build without a benchmark, and the stage always runs.
    assert first.manifest == plain.manifest
    record = next(s for s in first.stages if s["name"] == "benchmark")
    assert record["status"] == "ok" and "cache" not in record
    second = run_build(compose_config([*TINY, cache, *FAST]), tmp_path / "b")
    assert second.report["cache"]["hits"] == ["capture", "fx_optimize", "convert", "simplify", "validate"]
    assert (tmp_path / "b" / "benchmark.json").is_file()


def test_benchmark_is_skipped_when_validation_fails(tmp_path: Path) -> None:
    cfg = compose_config(
        ["model=custom", "model._target_=tests.models.CallCounterScale", "allowed_target_prefixes=[tests.]",
         "input=image32", "cache=off", *FAST]
    )  # fmt: skip
    with pytest.raises(ValidationFailed):
        run_build(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "benchmark.json").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("benchmark.iterations=0", "benchmark.iterations"),
        ("benchmark.warmup=-1", "benchmark.warmup"),
        ("benchmark.shapes=[example,huge]", "benchmark.shapes"),
        ("benchmark.threads=0", "benchmark.threads"),
    ],
)
def test_bad_benchmark_settings_fail_before_any_stage(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_build(compose_config([*TINY, "cache=off", "benchmark.enabled=true", override]), tmp_path / "run")
    assert info.value.key == key and not (tmp_path / "run" / "stages").exists()

"""benchmark (optional, `benchmark.enabled=true`): latency of the validated model in onnxruntime.

Runs after validation passed, on the shapes it names (the export example and the max of every
dynamic dim by default), with warm-up runs first; optionally times eager PyTorch on the same inputs
for a speed-up figure. Timings vary from run to run: they go to benchmark.json and report.json,
never into the manifest, and the stage is never cached.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from omegaconf import DictConfig

from onnxbuild.artifacts import canonical_json, write_text_atomic
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import ConfigError
from onnxbuild.inputs import export_sizes, make_inputs, split_call, to_numpy_feed, validation_shape_sets

NAME = "benchmark"
VERSION = 1
SHAPES = ("example", "min", "max", "odd")

log = logging.getLogger("onnxbuild")


def check_section(section: DictConfig) -> None:
    """Called before any work (preflight): bad counts or shape names fail at once."""
    for key in ("warmup", "iterations"):
        value = int(section[key])
        if value < (1 if key == "iterations" else 0):
            raise ConfigError(
                f"must be {'>= 1' if key == 'iterations' else '>= 0'}, got {value}",
                key=f"benchmark.{key}",
                hint="e.g. benchmark.warmup=5 benchmark.iterations=50",
            )
    unknown = [s for s in section.shapes if s not in SHAPES]
    if unknown or not section.shapes:
        raise ConfigError(
            f"unknown or no benchmark shapes {unknown or list(section.shapes)}",
            key="benchmark.shapes",
            hint=f"choose from {list(SHAPES)}",
        )
    if section.threads is not None and int(section.threads) < 1:
        raise ConfigError("must be >= 1 or null", key="benchmark.threads", hint="null: onnxruntime's default")


def _times_ms(call: Any, warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p90_ms": round(p90, 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "min_ms": round(ordered[0], 4),
    }


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:
    import onnxruntime as ort
    import torch

    from onnxbuild.ort_sessions import safe_level, session_options
    from onnxbuild.stages.validate import ort_providers

    validated = ctx.facts.get("validation") or {}
    level = (
        validated.get("graph_optimization_level")
        or safe_level(upstream.path, str(ctx.cfg.device.name), NAME)[0]
    )
    options = session_options(level)
    if section.threads is not None:
        options.intra_op_num_threads = int(section.threads)
    providers = ort_providers(str(ctx.cfg.device.name), int(ctx.cfg.device.index))
    session = ort.InferenceSession(str(upstream.path), options, providers=providers)
    model = ctx.model() if section.eager else None
    by_label = {s.label: s.sizes for s in validation_shape_sets(ctx.specs)}
    by_label.setdefault("example", export_sizes(ctx.specs))
    results = []
    for label in dict.fromkeys(section.shapes):  # in order, once each
        sizes = by_label.get(label, by_label.get("static", {}))
        values = make_inputs(ctx.specs, sizes, seed=int(ctx.cfg.seed) + 7)
        feed = to_numpy_feed(ctx.specs, values)
        entry: dict[str, Any] = {
            "shape_set": label,
            "sizes": sizes,
            "input_shapes": {k: list(v.shape) for k, v in feed.items()},
            "onnxruntime": _stats(
                _times_ms(lambda f=feed: session.run(None, f), section.warmup, section.iterations)
            ),
        }
        if model is not None:
            device_values = {
                k: v.to(ctx.torch_device) if isinstance(v, torch.Tensor) else v for k, v in values.items()
            }
            args, kwargs = split_call(ctx.specs, device_values)

            def eager(a: tuple = args, kw: dict = kwargs) -> None:
                with torch.no_grad():
                    model(*a, **kw)
                if ctx.torch_device.startswith("cuda"):
                    torch.cuda.synchronize()

            entry["eager"] = _stats(_times_ms(eager, section.warmup, section.iterations))
            entry["speedup_vs_eager"] = round(
                entry["eager"]["p50_ms"] / max(entry["onnxruntime"]["p50_ms"], 1e-9), 3
            )
        results.append(entry)
        log.info(
            "benchmark %s %s: onnxruntime p50 %.3f ms%s",
            label,
            sizes,
            entry["onnxruntime"]["p50_ms"],
            f", eager p50 {entry['eager']['p50_ms']:.3f} ms" if "eager" in entry else "",
        )
    report = {
        "providers": session.get_providers(),
        "threads": section.threads,
        "warmup": int(section.warmup),
        "iterations": int(section.iterations),
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    write_text_atomic(ctx.run_dir / "benchmark.json", canonical_json(report))
    ctx.facts["benchmark"] = report
    return Artifact(path=upstream.path, digest=upstream.digest, payload=upstream.payload, info={})

"""onnxbuild resnet50 build vs the hand-written script, whole processes, alternating, median of N.

Prints wall seconds for each and the ratio onnxbuild / script (target: <= 1.0). onnxbuild runs with
cache=off: with the cache on, every run after the first is a no-op rebuild and the ratio means nothing.

The script checks one batch of 2 in onnxruntime; onnxbuild validates every input set (batch 1, 2,
3 and 64, plus two edge profiles), in eager PyTorch and in onnxruntime. That compute does not
shrink with runner overhead, so the benchmark also prints
- the validate stage's own seconds and the ratio without them: the runner's overhead on the work
  both do;
- the CPU seconds of each process: no schedule on this machine's CPUs finishes a build in less than
  its CPU seconds / CPU count, which bounds the ratio any runner could reach here.
Usage: python benchmarks/bench_resnet50.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import timed_with_cpu

HERE = Path(__file__).resolve().parent


def stage_seconds(run_dir: Path) -> dict[str, float]:
    report = json.loads((run_dir / "report.json").read_text())
    return {s["name"]: s["seconds"] for s in report["stages"] if "seconds" in s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ours, theirs, validate, ours_cpu, theirs_cpu = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.runs):
            run_dir = root / f"ob{i}"
            cmd = [
                sys.executable,
                "-m",
                "onnxbuild",
                "model=resnet50",
                "cache=off",
                f"hydra.run.dir={run_dir}",
            ]
            wall, cpu = timed_with_cpu(cmd, root)
            ours.append(wall)
            ours_cpu.append(cpu)
            stages = stage_seconds(run_dir)
            validate.append(stages.get("validate", 0.0))
            script = [sys.executable, str(HERE / "handwritten_resnet50.py"), str(root / f"hw{i}")]
            wall, cpu = timed_with_cpu(script, root)
            theirs.append(wall)
            theirs_cpu.append(cpu)
            detail = "  ".join(f"{k} {v:.1f}" for k, v in stages.items())
            print(
                f"run {i + 1}: onnxbuild {ours[-1]:.1f}s ({detail}; {ours_cpu[-1]:.0f} CPU-s)  "
                f"script {theirs[-1]:.1f}s ({theirs_cpu[-1]:.0f} CPU-s)",
                flush=True,
            )
    ob, hw, val = statistics.median(ours), statistics.median(theirs), statistics.median(validate)
    without = statistics.median(o - v for o, v in zip(ours, validate, strict=True))
    cpus = os.cpu_count() or 1
    cpu_s = statistics.median(ours_cpu)
    print(
        f"resnet50 build, median of {args.runs} on {cpus} CPUs: onnxbuild {ob:.1f}s, "
        f"hand-written script {hw:.1f}s, ratio {ob / hw:.2f} (target <= 1.0)"
    )
    print(
        f"  of which onnxbuild's validate stage {val:.1f}s (eager + onnxruntime on every input set); "
        f"without it {without:.1f}s, ratio {without / hw:.2f}"
    )
    print(
        f"  onnxbuild used {cpu_s:.0f} CPU-s: on {cpus} CPUs no schedule of that work takes less than "
        f"{cpu_s / cpus:.1f}s, a ratio of {cpu_s / cpus / hw:.2f}"
    )


if __name__ == "__main__":
    main()

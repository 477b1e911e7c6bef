"""onnxbuild resnet50 build vs the hand-written script, whole processes, alternating, median of N.

Prints wall seconds for each and the ratio onnxbuild / script (target: <= 1.0). onnxbuild runs with
cache=off: with the cache on, every run after the first is a no-op rebuild and the ratio means nothing.
Usage: python benchmarks/bench_resnet50.py [--runs 3] [--model resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import timed

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.runs):
            ours.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "onnxbuild",
                        "model=resnet50",
                        "cache=off",
                        f"hydra.run.dir={root}/ob{i}",
                    ],
                    root,
                )
            )
            theirs.append(
                timed([sys.executable, str(HERE / "handwritten_resnet50.py"), str(root / f"hw{i}")], root)
            )
            print(f"run {i + 1}: onnxbuild {ours[-1]:.1f}s  script {theirs[-1]:.1f}s", flush=True)
    ob, hw = statistics.median(ours), statistics.median(theirs)
    print(
        f"resnet50 build, median of {args.runs}: onnxbuild {ob:.1f}s, hand-written script {hw:.1f}s, "
        f"ratio {ob / hw:.2f} (target <= 1.0)"
    )


if __name__ == "__main__":
    main()

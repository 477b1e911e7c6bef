"""Stage cache figures, whole processes as a user runs them (prints figures; no assertions).

1. Cold build vs no-op rebuild of one model (default resnet50): wall seconds and ratio. The no-op
   rebuild is every stage a cache hit; also printed: bare `python -c "import hydra"` start-up.
2. A 4-opset sweep (`-m opset=17,18,19,20`, one fresh cache) vs 4 independent cold builds
   (`cache=off`): wall seconds and ratio (sweep / independent).

Usage: python benchmarks/bench_cache.py [--model resnet50] [--sweep-model resnet50] [--skip-sweep] [--skip-noop]
(model names are config options: resnet = resnet18, resnet50, mobilenet_v3_small, tiny_cnn)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import timed

OPSETS = (17, 18, 19, 20)


def build(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "onnxbuild", *overrides]


def noop_vs_cold(model: str, root: Path) -> None:
    cache = root / "cache-noop"
    common = [f"model={model}", f"cache.root={cache}"]
    cold = timed(build(*common, f"hydra.run.dir={root}/cold"), root)
    noop = timed(build(*common, f"hydra.run.dir={root}/noop"), root)
    report = json.loads((root / "noop" / "report.json").read_text())
    startup = timed([sys.executable, "-c", "import hydra, omegaconf"], root)
    print(
        f"{model}: cold build {cold:.1f}s, no-op rebuild {noop:.2f}s "
        f"(cache hits: {len(report['cache']['hits'])}/5), ratio cold/no-op {cold / noop:.0f}x; "
        f"python+hydra import alone {startup:.2f}s",
        flush=True,
    )


def sweep_vs_independent(model: str, root: Path) -> None:
    opsets = ",".join(str(o) for o in OPSETS)
    sweep = timed(
        build(
            "-m",
            f"model={model}",
            f"opset={opsets}",
            f"cache.root={root}/cache-sweep",
            f"hydra.sweep.dir={root}/sweep",
        ),
        root,
    )
    independent = 0.0
    for opset in OPSETS:
        independent += timed(
            build(f"model={model}", f"opset={opset}", "cache=off", f"hydra.run.dir={root}/ind{opset}"), root
        )
    print(
        f"{model}: {len(OPSETS)}-opset sweep {sweep:.1f}s, {len(OPSETS)} independent cold builds "
        f"{independent:.1f}s, ratio sweep/independent {sweep / independent:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--sweep-model", default="resnet50")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-noop", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_noop:
            noop_vs_cold(args.model, root)
        if not args.skip_sweep:
            sweep_vs_independent(args.sweep_model, root)


if __name__ == "__main__":
    main()

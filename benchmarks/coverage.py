"""Coverage table: build every torchvision classification + segmentation model and the HF presets.

One `python -m onnxbuild` subprocess per model (a crash, hang or OOM only costs that model), a
per-model timeout, opset 18, a small input (batch dynamic 1..2; small images where the
architecture allows, its natural size where it does not). Reads report.json / validation.json of
each run and writes coverage.csv and coverage.md after every model, so an interrupted run still
leaves a (partial) table. Heavy run artifacts are deleted as soon as a model is done.

Usage: nice -n 19 python benchmarks/coverage.py [--only resnet18,minilm] [--timeout 600] [--workers 2] [--resume]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOT_RUN = "not run"
LIVE: set[subprocess.Popen] = set()  # running builds, killed when the coverage run is stopped
STOP = threading.Event()
SMALL_IMAGE = 64  # classification models that accept any size
SEGMENTATION_IMAGE = 128
COLUMNS = [
    "model",
    "family",
    "status",
    "failed_stage",
    "reason",
    "export_s",
    "total_s",
    "nodes",
    "max_abs_error",
    "degenerate_reference",
    "input",
    "init",
    "commit",
]


@dataclass
class Job:
    model: str
    family: str
    overrides: list[str]
    input_text: str
    params: int | None = None


@dataclass
class Row:
    model: str
    family: str
    status: str
    failed_stage: str = ""
    reason: str = ""
    export_s: float | None = None
    total_s: float | None = None
    nodes: int | None = None
    max_abs_error: float | None = None
    degenerate_reference: str = ""
    input: str = ""
    init: str = ""  # model.init used (informative / default / checkpoint), from the manifest
    commit: str = ""  # onnxbuild git commit the row was built with
    extra: dict = field(default_factory=dict)


def image_input(size: int) -> str:
    shape = f"[2,3,{size},{size}]"
    return (
        f"input.inputs=[{{name:input,dtype:float32,shape:{shape},dynamic:{{0:{{name:batch,min:1,max:2}}}}}}]"
    )


def torchvision_jobs() -> list[Job]:
    from onnxbuild.torchvision_zoo import (
        NATURAL_RESOLUTION,
        classification_archs,
        num_params,
        segmentation_archs,
    )

    jobs = []
    for arch in classification_archs():
        size = NATURAL_RESOLUTION.get(arch, SMALL_IMAGE)
        jobs.append(
            Job(
                arch,
                "torchvision",
                ["model=torchvision", f"model.kwargs.arch={arch}", image_input(size)],
                f"1..2x3x{size}x{size}",
                num_params(arch),
            )
        )
    seg = []
    for arch in segmentation_archs():
        size = SEGMENTATION_IMAGE
        seg.append(
            Job(
                arch,
                "torchvision-seg",
                ["model=torchvision", f"model.kwargs.arch={arch}", image_input(size)],
                f"1..2x3x{size}x{size}",
                num_params(arch),
            )
        )
    # Small before large: a slow giant at the end cannot starve the rest of the table.
    return sorted(jobs + seg, key=lambda j: (j.params is None, j.params or 0, j.model))


DYNAMIC_TEXT = "dynamic:{0:{name:batch,min:1,max:2},1:{name:sequence,min:1,max:32}}"
TEXT_SMALL = [
    "input=text_seq",
    "input.inputs=[{name:input_ids,dtype:int64,shape:[2,16],low:0,high:1000,keyword:true,"
    + DYNAMIC_TEXT
    + "},"
    "{name:attention_mask,dtype:int64,shape:[2,16],pattern:padding_mask,keyword:true," + DYNAMIC_TEXT + "}]",
]


def hf_jobs() -> list[Job]:
    return [
        Job("bert_tiny", "hf-config", ["model=bert_tiny", *TEXT_SMALL], "text_seq batch 1..2, seq ..32"),
        Job("gpt2_tiny", "hf-config", ["model=gpt2_tiny", *TEXT_SMALL], "text_seq batch 1..2, seq ..32"),
        Job("vit_tiny", "hf-config", ["model=vit_tiny", "input=image32"], "1..16x3x32x32"),
        Job("minilm", "hf-pretrained", ["model=minilm", "input=text_seq"], "text_seq + tokenized sentences"),
    ]


def _stage_seconds(report: dict, names: tuple[str, ...]) -> float | None:
    values = [s.get("seconds") for s in report.get("stages", []) if s["name"] in names and "seconds" in s]
    return round(sum(values), 2) if values else None


def _nodes(report: dict) -> int | None:
    for name in ("simplify", "convert"):
        for stage in report.get("stages", []):
            if stage["name"] == name and stage.get("status") == "ok":
                return stage.get("info", {}).get("nodes")
    return None


def row_from_run(job: Job, run_dir: Path, proc: subprocess.CompletedProcess | None, seconds: float) -> Row:
    row = Row(job.model, job.family, "failed", input=job.input_text, total_s=round(seconds, 1))
    report_path = run_dir / "report.json"
    if proc is None:
        row.status, row.reason = "timeout", "no result in time"
        return row
    if not report_path.is_file():
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        row.status = "crashed" if proc.returncode < 0 or proc.returncode not in (1, 2, 3) else "failed"
        row.reason = (tail[-1] if tail else f"exit code {proc.returncode}")[:200]
        if proc.returncode < 0:
            row.reason = f"killed by signal {-proc.returncode} (out of memory?)"
        for ln in tail:
            if ln.startswith("onnxbuild: error:"):
                row.reason = ln.removeprefix("onnxbuild: error:").strip()[:200]
        return row
    report = json.loads(report_path.read_text())
    row.status = report["status"]
    row.export_s = _stage_seconds(report, ("capture", "convert"))
    row.nodes = _nodes(report)
    if report.get("error"):
        err = report["error"]
        row.failed_stage = err.get("stage") or ""
        row.reason = " ".join(str(err.get("message", "")).split())[:200]
    manifest_path = run_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        row.init = str((manifest.get("model_init") or {}).get("mode", ""))
        git = manifest.get("onnxbuild_git") or {}
        row.commit = str(git.get("commit") or "")[:10]
    validation_path = run_dir / "validation.json"
    if validation_path.is_file():
        validation = json.loads(validation_path.read_text())
        row.max_abs_error = validation.get("max_abs_error")
        row.degenerate_reference = ",".join(validation.get("degenerate_outputs") or []) or "no"
    return row


def run_job(job: Job, runs_root: Path, timeout: int, wall_factor: int = 6) -> Row:
    run_dir = runs_root / job.model
    shutil.rmtree(run_dir, ignore_errors=True)
    # cache=off: every model is built once, and 90 cached models would fill a disk (60 GB here).
    cmd = [
        sys.executable,
        "-m",
        "onnxbuild",
        *job.overrides,
        "opset=18",
        "cache=off",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)
    start = time.perf_counter()

    def limit_cpu() -> None:
        # CPU seconds, not wall time: on a shared machine a starved build is slow, not stuck.
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (timeout, timeout + 30))

    popen = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_cpu,
    )
    LIVE.add(popen)
    proc: subprocess.CompletedProcess | None
    try:
        out, err = popen.communicate(timeout=timeout * wall_factor)
        proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        proc = None
    finally:
        LIVE.discard(popen)
    seconds = time.perf_counter() - start
    if proc is not None and proc.returncode == -signal.SIGXCPU:
        proc = None  # CPU limit reached
    row = row_from_run(job, run_dir, proc, seconds)
    if proc is None:
        row.reason = f"no result within {timeout} CPU seconds ({seconds:.0f}s wall)"
    # Keep the small reports, drop the model files (several GB for the largest models).
    for path in [run_dir / "stages", *run_dir.glob("*.onnx"), *run_dir.glob("*.onnx.data")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return row


def _fmt(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_tables(rows: list[Row], out_dir: Path, total_jobs: int, started: str) -> None:
    csv_tmp = out_dir / ".coverage.csv.tmp"
    with csv_tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            data = asdict(row)
            writer.writerow({c: data[c] for c in COLUMNS})
    os.replace(csv_tmp, out_dir / "coverage.csv")

    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    done = sum(1 for r in rows if r.status != NOT_RUN)
    partial = "" if done >= total_jobs else f" **Partial: {done} of {total_jobs} models done.**"
    import platform

    import torch

    lines = [
        "# onnxbuild coverage",
        "",
        f"Generated by `make coverage` (benchmarks/coverage.py), started {started}, opset 18, CPU, "
        f"torch {torch.__version__}, host {platform.node()} ({os.cpu_count()} cores).{partial}",
        "",
        f"Summary: {summary}.",
        "",
        "Inputs: batch dynamic 1..2; classification models at 64x64 unless the architecture needs its "
        "natural size (ViT, MaxViT 224; Inception-v3 299); segmentation at 128x128; seeded weights. "
        "One subprocess per model with a CPU-time limit (`timeout` = limit reached; on a shared machine "
        "wall-clock `total_s` includes waiting for the CPU). "
        "`export_s` = capture + convert seconds; `nodes` = final graph; `max_abs_error` = worst "
        "onnxruntime vs eager difference over all validation sets; `degenerate` lists outputs that were "
        "constant for every input (weak comparison); `init` = weight initialisation used (model.init); "
        "`commit` = onnxbuild commit the row was built with.",
        "",
        "| model | family | status | failed stage | reason | export s | total s | nodes | max abs err | degenerate | input | init | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reason = row.reason.replace("|", "\\|")
        lines.append(
            f"| {row.model} | {row.family} | {row.status} | {row.failed_stage} | {reason} | {_fmt(row.export_s)} | "
            f"{_fmt(row.total_s)} | {_fmt(row.nodes)} | {_fmt(row.max_abs_error)} | "
            f"{row.degenerate_reference} | {row.input} | {row.init} | {row.commit} |"
        )
    md_tmp = out_dir / ".coverage.md.tmp"
    md_tmp.write_text("\n".join(lines) + "\n")
    os.replace(md_tmp, out_dir / "coverage.md")


def read_rows(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    rows = []
    with path.open() as fh:
        for item in csv.DictReader(fh):
            rows.append(
                Row(
                    model=item["model"],
                    family=item["family"],
                    status=item["status"],
                    failed_stage=item["failed_stage"],
                    reason=item["reason"],
                    export_s=float(item["export_s"]) if item["export_s"] else None,
                    total_s=float(item["total_s"]) if item["total_s"] else None,
                    nodes=int(item["nodes"]) if item["nodes"] else None,
                    max_abs_error=float(item["max_abs_error"]) if item["max_abs_error"] else None,
                    degenerate_reference=item["degenerate_reference"],
                    input=item["input"],
                    init=item.get("init") or "",
                    commit=item.get("commit") or "",
                )
            )
    return rows


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--skip", default="", help="comma-separated model names to leave out")
    parser.add_argument(
        "--timeout", type=int, default=600, help="CPU seconds per model (wall clock: 6x that at most)"
    )
    parser.add_argument("--out", type=Path, default=REPO, help="where coverage.md/csv go")
    parser.add_argument("--runs", type=Path, default=REPO / "coverage_runs", help="run directories")
    parser.add_argument("--resume", action="store_true", help="keep rows already in coverage.csv")
    parser.add_argument(
        "--retry",
        default=f"timeout,{NOT_RUN}",
        help="with --resume: statuses to build again (e.g. timeout,failed; 'stale': rows without a commit)",
    )
    parser.add_argument("--workers", type=int, default=1, help="models built at the same time")
    parser.add_argument(
        "--big-params", type=int, default=100_000_000, help="models above this many parameters run alone"
    )
    args = parser.parse_args()

    jobs = torchvision_jobs() + hf_jobs()
    if args.only:
        wanted = set(args.only.split(","))
        jobs = [j for j in jobs if j.model in wanted]
    if args.skip:
        jobs = [j for j in jobs if j.model not in set(args.skip.split(","))]
    signal.signal(signal.SIGTERM, _stop)
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    # --resume keeps finished rows, except those whose status is in --retry.
    retry = set(args.retry.split(","))
    # "stale": rows from before the build recorded its init mode and commit (older code).
    rows = (
        [
            r
            for r in read_rows(args.out / "coverage.csv")
            if r.status not in retry and not ("stale" in retry and not r.commit)
        ]
        if args.resume
        else []
    )
    done = {r.model for r in rows}
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    total = len(done | {j.model for j in jobs})
    order = {j.model: i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if j.model not in done]
    lock = threading.Lock()

    def run_one(job: Job) -> None:
        if STOP.is_set():
            return
        row = run_job(job, args.runs, args.timeout)
        with lock:
            if STOP.is_set():
                return  # killed by the stop, not by its own fault
            rows.append(row)
            rows.sort(key=lambda r: order.get(r.model, len(order)))
            write_tables(rows, args.out, total, started)
            print(
                f"[{len(rows)}/{total}] {job.model}: {row.status} {row.failed_stage} {row.reason[:100]} "
                f"({row.total_s}s)",
                flush=True,
            )

    # Models up to --big-params run --workers at a time; larger ones (GBs of weights) one at a time,
    # so two giants never share the memory.
    small = [j for j in todo if (j.params or 0) <= args.big_params]
    big = [j for j in todo if (j.params or 0) > args.big_params]
    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    try:
        list(pool.map(run_one, small))
        pool.shutdown()
        for job in big:
            run_one(job)
    except KeyboardInterrupt:
        # Stopped (Ctrl-C, or SIGTERM): kill the running builds; every model still gets a row.
        STOP.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for popen in list(LIVE):
            popen.kill()
        with lock:
            finished = {r.model for r in rows}
            rows.extend(
                Row(
                    j.model,
                    j.family,
                    NOT_RUN,
                    reason="the coverage run was stopped before this model",
                    input=j.input_text,
                )
                for j in jobs
                if j.model not in finished
            )
            rows.sort(key=lambda r: order.get(r.model, len(order)))
            write_tables(rows, args.out, total, started)
        sys.exit(f"coverage run stopped; partial table in {args.out / 'coverage.md'}")


if __name__ == "__main__":
    main()

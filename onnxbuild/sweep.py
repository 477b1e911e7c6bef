"""Sweep summary: one row per job, read from each run dir on disk (status, report, manifest).

Jobs may have run in other processes or on other machines, so nothing here relies on memory:
a job that left no final status.json is reported as failed ("did not finish").
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from onnxbuild.artifacts import write_text_atomic
from onnxbuild.jobstatus import FAILED, OK, RUNNING, STATUS_FILE, one_line, read_status

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
HYDRA_SUBDIR = ".hydra"
# pipeline.run_build logs "stage <name> ..." when a stage starts.
STAGE_LINE = re.compile(r"\bstage (\w+) \.\.\.$", re.MULTILINE)


@dataclass
class Row:
    job: int | None
    overrides: str
    status: str
    stage: str
    reason: str
    model: str
    opset: int | str
    inputs: str
    nodes: int | str
    size_bytes: int | str
    max_abs_error: float | str
    max_rel_error: float | str
    build_seconds: float | str
    # onnxruntime p50 latency (ms) of the first benchmark shape set, when benchmark.enabled.
    latency_p50_ms: float | str
    cache_hits: str
    sha256: str
    run_dir: str


COLUMNS = [f.name for f in fields(Row)]
# Columns that legitimately differ between two runs of the same sweep.
TIMING_COLUMNS = ("build_seconds", "latency_p50_ms")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    rows: list[Row]

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status != OK]


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job run dir under the sweep dir: Hydra's .hydra/overrides.yaml or our status.json."""
    found = {p.parent.parent for p in sweep_dir.rglob(f"{HYDRA_SUBDIR}/overrides.yaml")}
    found |= {p.parent for p in sweep_dir.rglob(STATUS_FILE)}
    return sorted(d for d in found if d != sweep_dir and ".submitit" not in d.relative_to(sweep_dir).parts)


def format_inputs(input_cfg: dict[str, Any] | None) -> str:
    """`input[batch(1..16),3,32,32]`: the export example shape with dynamic dims as name(min..max)."""
    if not input_cfg:
        return ""
    parts = []
    for spec in input_cfg.get("inputs") or []:
        if spec.get("constant"):
            parts.append(f"{spec.get('name')}={spec.get('value')!r}")
            continue
        dynamic = {int(k): v for k, v in (spec.get("dynamic") or {}).items()}
        dims = []
        for i, size in enumerate(spec.get("shape") or []):
            dim = dynamic.get(i)
            dims.append(f"{dim.get('name')}({dim.get('min')}..{dim.get('max')})" if dim else str(size))
        parts.append(f"{spec.get('name')}[{','.join(dims)}]")
    return " ".join(parts)


def _cache_hits(stages: list[dict[str, Any]]) -> str:
    """`hits/stages with cache info` when report.json records per-stage cache use, else blank."""
    known = hits = 0
    for stage in stages:
        cache = stage.get("cache")
        if cache is None:
            continue
        if isinstance(cache, dict):
            hit = cache.get("hit", cache.get("status") == "hit")
        else:
            hit = cache is True or str(cache).lower() == "hit"
        known += 1
        hits += bool(hit)
    return f"{hits}/{known}" if known else ""


def _final_nodes(stages: list[dict[str, Any]]) -> int | str:
    nodes: int | str = ""
    for stage in stages:
        info = stage.get("info") or {}
        if stage.get("status") == "ok" and "nodes" in info:
            nodes = info["nodes"]
    return nodes


def _failed_stage(report: dict[str, Any] | None) -> str:
    for stage in (report or {}).get("stages", []):
        if stage.get("status") == "failed":
            return str(stage["name"])
    return ""


def _last_started_stage(run_dir: Path) -> str:
    """The stage a killed job was in: the last `stage <name> ...` line of its log."""
    started = ""
    for log_file in run_dir.glob("*.log"):
        try:
            text = log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in STAGE_LINE.finditer(text):
            started = match.group(1)
    return started


def read_row(run_dir: Path, sweep_dir: Path) -> Row:
    """One job's row, from its status.json, report.json, manifest.json and Hydra snapshot."""
    status = read_status(run_dir) or {}
    report = _load_json(run_dir / "report.json")
    manifest = _load_json(run_dir / "manifest.json")
    # The manifest holds the resolved config; a job that failed before writing one has Hydra's copy.
    config = (manifest or {}).get("config") or _load_yaml(run_dir / HYDRA_SUBDIR / "config.yaml") or {}
    overrides = status.get("overrides") or _load_yaml(run_dir / HYDRA_SUBDIR / "overrides.yaml") or []
    job = status.get("job")
    if job is None:
        hydra_cfg = _load_yaml(run_dir / HYDRA_SUBDIR / "hydra.yaml") or {}
        job = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num")

    state = status.get("status")
    stage, reason = status.get("stage") or "", status.get("reason") or ""
    if state not in (OK, FAILED):
        stage = (
            _failed_stage(report) or _last_started_stage(run_dir) or ("unknown" if state == RUNNING else "")
        )
        reason = (
            "job did not finish: status.json still says running (killed, timed out or crashed; see its log)"
            if state == RUNNING
            else "job did not finish: no status.json (crashed before the build; see its log)"
        )
        state = FAILED

    stages = (report or {}).get("stages", [])
    validation = (report or {}).get("validation") or {}
    model_artifact = next(
        (a for a in (manifest or {}).get("artifacts", []) if a.get("path") == "model.onnx"), None
    )
    return Row(
        job=job,
        overrides=" ".join(str(o) for o in overrides),
        status=state,
        stage=stage,
        reason=one_line(reason),
        model=str((config.get("model") or {}).get("name", "")),
        opset=config.get("opset", ""),
        inputs=format_inputs(config.get("input")),
        nodes=_final_nodes(stages),
        size_bytes=model_artifact["size"] if model_artifact else "",
        max_abs_error=validation.get("max_abs_error", ""),
        max_rel_error=validation.get("max_rel_error", ""),
        build_seconds=(report or {}).get("wall_seconds", status.get("seconds", "")),
        latency_p50_ms=_latency(report),
        cache_hits=_cache_hits(stages),
        sha256=model_artifact["sha256"] if model_artifact else "",
        run_dir=run_dir.relative_to(sweep_dir).as_posix(),
    )


def _latency(report: dict[str, Any] | None) -> float | str:
    results = ((report or {}).get("benchmark") or {}).get("results") or []
    return results[0]["onnxruntime"]["p50_ms"] if results else ""


def collect(sweep_dir: Path) -> SweepOutcome:
    rows = [read_row(d, sweep_dir) for d in job_dirs(sweep_dir)]
    rows.sort(key=lambda r: (r.job is None, r.job if r.job is not None else 0, r.run_dir))
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows)


def to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|")


def to_markdown(outcome: SweepOutcome) -> str:
    """A table of the varying overrides and the results; overrides shared by all jobs go above it."""
    rows = outcome.rows
    split = [r.overrides.split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if split else []
    ok = sum(r.status == OK for r in rows)
    lines = [
        f"# onnxbuild sweep: {len(rows)} jobs, {ok} ok, {len(rows) - ok} failed",
        "",
        f"sweep dir: `{outcome.sweep_dir}`",
        "",
    ]
    if common:
        lines += [f"common overrides: `{' '.join(common)}`", ""]
    header = [
        "job", "overrides", "status", "stage", "reason", "opset", "inputs", "nodes", "size",
        "max abs err", "max rel err", "build s", "p50 ms", "cache", "sha256",
    ]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row, parts in zip(rows, split, strict=True):
        varying = " ".join(o for o in parts if o not in common)
        cells = [
            row.job, varying, row.status.upper() if row.status != OK else OK, row.stage, row.reason,
            row.opset, row.inputs, row.nodes, row.size_bytes, row.max_abs_error, row.max_rel_error,
            row.build_seconds, row.latency_p50_ms, row.cache_hits, row.sha256[:12],
        ]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> SweepOutcome:
    """Write summary.csv and summary.md at the sweep root (atomically) and return the rows."""
    outcome = collect(sweep_dir)
    write_text_atomic(sweep_dir / SUMMARY_CSV, to_csv(outcome.rows))
    write_text_atomic(sweep_dir / SUMMARY_MD, to_markdown(outcome))
    return outcome

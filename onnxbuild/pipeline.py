"""The build pipeline, in one place: preflight checks, the ordered stages, publishing the artifact.

A stage is `run(ctx, section, upstream) -> Artifact`; `section` is the stage's own config section,
chosen here, so no stage reads another's configuration.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild import __version__
from onnxbuild.artifacts import (
    canonical_json,
    describe_file,
    text_sha256,
    write_json_atomic,
    write_text_atomic,
)
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import BuildError, ConfigError, DeviceError, StageError, ValidationFailed
from onnxbuild.init import resolve_init_mode
from onnxbuild.inputs import InputSpec, parse_specs
from onnxbuild.models import allowed_prefixes, check_checkpoint, resolve_target
from onnxbuild.versions import platform_info, tool_versions

log = logging.getLogger("onnxbuild")


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    section: Callable[[DictConfig], Any]
    enabled: Callable[[DictConfig], bool] = lambda cfg: True


STAGES: tuple[StageSpec, ...] = (
    StageSpec("capture", "onnxbuild.stages.capture", lambda cfg: cfg.capture),
    StageSpec(
        "fx_optimize",
        "onnxbuild.stages.fx_optimize",
        lambda cfg: cfg.optimization.fx,
        lambda cfg: bool(cfg.optimization.fx.enabled),
    ),
    StageSpec(
        "convert",
        "onnxbuild.stages.convert",
        lambda cfg: OmegaConf.create({"opset": cfg.opset, "translations": cfg.get("translations")}),
    ),
    StageSpec(
        "simplify",
        "onnxbuild.stages.simplify",
        lambda cfg: cfg.optimization.simplify,
        lambda cfg: bool(cfg.optimization.simplify.onnxsim or cfg.optimization.simplify.onnxscript_optimizer),
    ),
    StageSpec(
        "validate",
        "onnxbuild.stages.validate",
        lambda cfg: cfg.validation,
        lambda cfg: bool(cfg.validation.enabled),
    ),
)

MODEL_FILE = "model.onnx"
FAILED_MODEL_FILE = "model.FAILED.onnx"


@dataclass
class BuildResult:
    run_dir: Path
    model_path: Path | None
    manifest: dict[str, Any]
    report: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)


def clean_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved build config without Hydra's runtime section: what defines the build."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def preflight(cfg: DictConfig) -> list[InputSpec]:
    """Checks that need no heavy work; every failure here names a config key."""
    specs = parse_specs(cfg.input)
    device = str(cfg.device.name)
    if device not in ("cpu", "cuda"):
        raise ConfigError(
            f"unknown device '{device}'", key="device.name", hint="use device=cpu or device=cuda"
        )
    if cfg.opset < 7 or cfg.opset > 30:
        raise ConfigError(
            f"opset {cfg.opset} is out of range", key="opset", hint="use an opset between 17 and 23"
        )
    if str(cfg.capture.strategy) not in ("auto", "strict", "non_strict"):
        raise ConfigError(
            f"unknown capture strategy '{cfg.capture.strategy}'",
            key="capture.strategy",
            hint="one of auto, strict, non_strict",
        )
    resolve_target(str(cfg.model._target_), allowed_prefixes(cfg.model, list(cfg.allowed_target_prefixes)))
    check_checkpoint(cfg.model)
    resolve_init_mode(cfg.model)
    if cfg.get("translations") is not None and cfg.translations.table:
        from onnxbuild.translations import translation_table

        translation_table(cfg.translations)
    if device == "cuda":
        check_cuda(int(cfg.device.index))
    return specs


def check_cuda(index: int) -> None:
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise DeviceError(
            f"device=cuda was requested but no CUDA device is available (torch {torch.__version__}, {build}, "
            f"{torch.cuda.device_count()} GPUs visible)",
            key="device",
            hint="run with device=cpu, or on a machine with an NVIDIA GPU and driver",
        )
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device.index={index} but only {torch.cuda.device_count()} GPUs are visible",
            key="device.index",
            hint="pick an index below the GPU count or set CUDA_VISIBLE_DEVICES",
        )
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError(
            "device=cuda needs onnxruntime's CUDAExecutionProvider, which this onnxruntime lacks "
            f"(providers: {ort.get_available_providers()})",
            key="device",
            hint="pip uninstall onnxruntime && pip install 'onnxbuild[gpu]' (onnxruntime-gpu), or use device=cpu",
        )


def _run_stage(spec: StageSpec, ctx: BuildContext, upstream: Artifact | None) -> Artifact:
    module = importlib.import_module(spec.module)
    try:
        artifact = module.run(ctx, spec.section(ctx.cfg), upstream)
    except BuildError as exc:
        if exc.stage is None:
            exc.stage = spec.name
        raise
    except Exception as exc:
        from onnxbuild.stages.capture import first_line

        raise StageError(
            f"{type(exc).__name__}: {first_line(exc)}",
            stage=spec.name,
            hint="unexpected failure; run with HYDRA_FULL_ERROR=1 for the traceback",
        ) from exc
    if upstream is not None and "io" not in artifact.info and "io" in upstream.info:
        artifact.info["io"] = upstream.info["io"]
    return artifact


def run_build(cfg: DictConfig, run_dir: Path) -> BuildResult:
    """Run every enabled stage in order; publish model.onnx only when validation passed."""
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = preflight(cfg)
    ctx = BuildContext(cfg=cfg, run_dir=run_dir, specs=specs)
    stage_records: list[dict[str, Any]] = []
    upstream: Artifact | None = None
    onnx_artifact: Artifact | None = None
    failure: BuildError | None = None
    for spec in STAGES:
        if not spec.enabled(cfg):
            stage_records.append({"name": spec.name, "status": "skipped"})
            continue
        log.info("stage %s ...", spec.name)
        t0 = time.perf_counter()
        try:
            artifact = _run_stage(spec, ctx, upstream)
        except BuildError as exc:
            stage_records.append(
                {
                    "name": spec.name,
                    "status": "failed",
                    "seconds": round(time.perf_counter() - t0, 3),
                    "error": exc.one_line(),
                }
            )
            failure = exc
            break
        seconds = time.perf_counter() - t0
        log.info("stage %s done in %.2fs", spec.name, seconds)
        stage_records.append(
            {
                "name": spec.name,
                "status": "ok",
                "seconds": round(seconds, 3),
                "artifact": artifact.path.relative_to(run_dir).as_posix(),
                "sha256": artifact.digest,
                "info": {k: v for k, v in artifact.info.items() if k not in ("io", "report")},
            }
        )
        if artifact.path.suffix == ".onnx":
            onnx_artifact = artifact
        if spec.name == "capture":
            ctx.facts["capture_strategy"] = artifact.info["strategy"]
            ctx.facts["constants"] = artifact.info["constants"]
            ctx.facts["io"] = artifact.info["io"]
        if spec.name == "validate":
            ctx.facts["validation"] = artifact.info["report"]
        upstream = artifact

    model_path = _publish(run_dir, onnx_artifact, failure)
    manifest = build_manifest(cfg, ctx, run_dir, model_path)
    report = build_report(cfg, ctx, run_dir, stage_records, started, failure, model_path)
    write_json_atomic(run_dir / "report.json", report)
    write_json_atomic(run_dir / "manifest.json", manifest)
    write_sha256sums(run_dir, manifest)
    if failure is not None:
        raise failure
    return BuildResult(
        run_dir=run_dir, model_path=model_path, manifest=manifest, report=report, stages=stage_records
    )


def _publish(run_dir: Path, artifact: Artifact | None, failure: BuildError | None) -> Path | None:
    """Expose the final graph: model.onnx on success, model.FAILED.onnx when validation failed."""
    for stale in (MODEL_FILE, FAILED_MODEL_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    if artifact is None or (failure is not None and not isinstance(failure, ValidationFailed)):
        return None
    name = FAILED_MODEL_FILE if failure is not None else MODEL_FILE
    target = run_dir / name
    data_file = artifact.path.with_name(artifact.path.name + ".data")
    if data_file.exists():
        # External data is referenced by file name: re-save under the published name.
        from onnxbuild.onnx_utils import load_model, save_model

        tmp_dir = run_dir / ".publish"
        tmp_dir.mkdir(exist_ok=True)
        files = save_model(load_model(artifact.path), tmp_dir / name)
        for f in reversed(files):
            os.replace(f, run_dir / f.name)
        tmp_dir.rmdir()
        return target
    tmp = run_dir / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(artifact.path, tmp)
    except OSError:
        shutil.copyfile(artifact.path, tmp)
    os.replace(tmp, target)
    return target


def build_manifest(
    cfg: DictConfig, ctx: BuildContext, run_dir: Path, model_path: Path | None
) -> dict[str, Any]:
    """Everything that defines the build and its outputs, and nothing that varies run to run."""
    config = clean_config(cfg)
    inputs = {}
    ckpt = cfg.model.get("checkpoint")
    if ckpt:
        from onnxbuild.artifacts import file_sha256

        inputs["model.checkpoint"] = {"name": Path(str(ckpt)).name, "sha256": file_sha256(Path(str(ckpt)))}
    artifacts = []
    if model_path is not None:
        artifacts.append(describe_file(model_path, run_dir))
        data = model_path.with_name(model_path.name + ".data")
        if data.exists():
            artifacts.append(describe_file(data, run_dir))
    return {
        "onnxbuild_version": __version__,
        "config": config,
        "config_sha256": text_sha256(canonical_json(config)),
        "inputs": inputs,
        "versions": tool_versions(),
        "platform": platform_info(),
        "capture_strategy": ctx.facts.get("capture_strategy"),
        "constants": ctx.facts.get("constants", {}),
        "model_init": ctx.facts.get("model_init") or {"mode": resolve_init_mode(cfg.model)},
        "io": {
            "inputs": [s.name for s in ctx.specs if not s.constant],
            "outputs": ctx.facts.get("io", {}).get("outputs", []),
        },
        "artifacts": artifacts,
        "status": "ok" if model_path is not None and model_path.name == MODEL_FILE else "failed",
    }


def build_report(
    cfg: DictConfig,
    ctx: BuildContext,
    run_dir: Path,
    stages: list[dict[str, Any]],
    started: float,
    failure: BuildError | None,
    model_path: Path | None,
) -> dict[str, Any]:
    """What happened in this run: timings, node counts, validation numbers, host facts."""
    import socket

    validation = ctx.facts.get("validation")
    return {
        "status": "failed" if failure else "ok",
        "error": failure.as_dict() if failure else None,
        "error_line": failure.one_line() if failure else None,
        "run_dir": str(run_dir.resolve()),
        "model": str(model_path) if model_path else None,
        "model_name": cfg.model.name,
        "opset": int(cfg.opset),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
        "host": socket.gethostname(),
        "stages": stages,
        "warnings": ctx.warnings,
        "validation": None
        if validation is None
        else {
            "passed": validation["passed"],
            "max_abs_error": validation["max_abs_error"],
            "max_rel_error": validation["max_rel_error"],
            "input_sets": [
                {
                    "label": r["label"],
                    "input_shapes": r["input_shapes"],
                    "passed": r["passed"],
                    "max_abs": max((o.get("max_abs", 0.0) for o in r["outputs"].values()), default=0.0),
                }
                for r in validation["input_sets"]
            ],
            "degenerate_outputs": validation["degenerate_outputs"],
            "weak": validation.get("weak", False),
            "nondeterministic": (validation.get("nondeterministic") or {}).get("finding"),
            "diagnosis": validation.get("diagnosis"),
            "table": validation.get("table", []),
        },
        "constants": ctx.facts.get("constants", {}),
        "model_init": (ctx.facts.get("model_init") or {}).get("mode"),
    }


def write_sha256sums(run_dir: Path, manifest: dict[str, Any]) -> None:
    lines = [f"{a['sha256']}  {a['path']}\n" for a in manifest["artifacts"]]
    write_text_atomic(run_dir / "SHA256SUMS", "".join(lines))

"""The build pipeline, in one place: preflight checks, the ordered stages, publishing the artifact.

A stage is `run(ctx, section, upstream) -> Artifact`; `section` is the stage's own config section,
chosen here, so no stage reads another's configuration.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild import __version__, versions
from onnxbuild.artifacts import (
    canonical_json,
    describe_file,
    text_sha256,
    write_json_atomic,
    write_text_atomic,
)
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import BuildError, ConfigError, DeviceError, StageError, ValidationFailed
from onnxbuild.fingerprint import (
    INPUT_FILE_KEYS,
    find_module_file,
    git_info,
    input_digests,
    source_digest,
    stage_version,
    target_identity,
)
from onnxbuild.init import resolve_init_mode
from onnxbuild.inputs import InputSpec, parse_specs
from onnxbuild.models import allowed_prefixes, check_checkpoint, resolve_target
from onnxbuild.validation_checks import check_validation_section
from onnxbuild.versions import platform_info, tool_versions

if TYPE_CHECKING:
    from onnxbuild.cache import Entry, StageCache

log = logging.getLogger("onnxbuild")


def _default_outputs(artifact: Artifact, ctx: BuildContext) -> list[Path]:
    data = artifact.path.with_name(artifact.path.name + ".data")
    return [artifact.path, data] if data.exists() else [artifact.path]


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    section: Callable[[DictConfig], Any]
    enabled: Callable[[DictConfig], bool] = lambda cfg: True
    # Everything the stage's result depends on besides its upstream artifact, for its cache key:
    # config keys it reads (its own section included), packages it runs, and whether it builds
    # the eager model (then the model factory's code identity counts too).
    reads: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    uses_model: bool = False
    # Files the stage writes (relative to the run dir they are what the cache stores and restores).
    outputs: Callable[[Artifact, BuildContext], list[Path]] = _default_outputs
    # The stage checks its upstream and hands it on unchanged (validate).
    passthrough: bool = False
    # Its result is reusable (timings are not: benchmark always runs).
    cacheable: bool = True


MODEL_TOOLS = ("torch", "torchvision", "transformers", "safetensors", "numpy")
ONNX_TOOLS = ("onnx", "onnxscript", "onnx-ir", "numpy")

STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "capture",
        "onnxbuild.stages.capture",
        lambda cfg: cfg.capture,
        reads=("capture", "model", "input", "seed", "device", "deterministic"),
        tools=MODEL_TOOLS,
        uses_model=True,
    ),
    StageSpec(
        "fx_optimize",
        "onnxbuild.stages.fx_optimize",
        lambda cfg: cfg.optimization.fx,
        lambda cfg: bool(cfg.optimization.fx.enabled),
        reads=("optimization.fx",),
        tools=("torch",),
    ),
    StageSpec(
        "convert",
        "onnxbuild.stages.convert",
        lambda cfg: OmegaConf.create({"opset": cfg.opset, "translations": cfg.get("translations")}),
        reads=("opset", "input", "translations"),
        tools=("torch", *ONNX_TOOLS),
    ),
    StageSpec(
        "simplify",
        "onnxbuild.stages.simplify",
        lambda cfg: cfg.optimization.simplify,
        lambda cfg: bool(cfg.optimization.simplify.onnxsim or cfg.optimization.simplify.onnxscript_optimizer),
        reads=("optimization.simplify", "input"),
        tools=(*ONNX_TOOLS, "onnxsim"),
    ),
    StageSpec(
        "validate",
        "onnxbuild.stages.validate",
        lambda cfg: cfg.validation,
        lambda cfg: bool(cfg.validation.enabled),
        reads=("validation", "model", "input", "seed", "device", "deterministic"),
        tools=(*MODEL_TOOLS, "onnxruntime", "onnxruntime-gpu"),
        uses_model=True,
        outputs=lambda artifact, ctx: [ctx.run_dir / "validation.json"],
        passthrough=True,
    ),
    StageSpec(
        "benchmark",
        "onnxbuild.stages.benchmark",
        lambda cfg: cfg.benchmark,
        lambda cfg: bool(cfg.benchmark.enabled),
        passthrough=True,
        cacheable=False,
    ),
)
# Config sections that change how a build runs but never what it produces: not in the manifest.
NON_DEFINING_KEYS = ("cache", "benchmark")

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


def defining_config(cfg: DictConfig) -> dict[str, Any]:
    """clean_config without the keys that cannot change the artifacts (cache settings)."""
    data = clean_config(cfg)
    for key in NON_DEFINING_KEYS:
        data.pop(key, None)
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
    check_target(str(cfg.model._target_), allowed_prefixes(cfg.model, list(cfg.allowed_target_prefixes)))
    check_checkpoint(cfg.model)
    resolve_init_mode(cfg.model)
    if cfg.validation.enabled:
        check_validation_section(cfg.validation)
    if cfg.benchmark.enabled:
        from onnxbuild.stages.benchmark import check_section

        check_section(cfg.benchmark)
    from onnxbuild.choices import check_group_choices
    from onnxbuild.release import check_release, check_release_command_line

    check_group_choices()
    check_release_command_line()
    if cfg.get("release") is not None and cfg.release.enabled:
        check_release(cfg)
    return specs


def check_target(target: str, prefixes: list[str]) -> None:
    """Allowlist and locate the model factory's module without importing it (imports are heavy)."""
    from onnxbuild.errors import ModelError

    if not target or target == "???" or not any(target.startswith(p) for p in prefixes):
        resolve_target(target, prefixes)  # raises the allowlist / missing-target error
    module = target.rpartition(".")[0]
    if module and find_module_file(module) is None:
        raise ModelError(
            f"cannot import '{target}': no module named '{module}'",
            key="model._target_",
            hint="check the spelling and that the package is installed in this environment",
        )


def prepare_runtime(cfg: DictConfig) -> Callable[[], None] | None:
    """Checks and settings that need torch: done once, before the first stage that really runs.

    Returns what undoes the global torch settings (for callers that build in-process, e.g. tests).
    """
    if cfg.get("deterministic"):  # read by cuBLAS when CUDA initializes: set before any torch call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    resolve_target(str(cfg.model._target_), allowed_prefixes(cfg.model, list(cfg.allowed_target_prefixes)))
    if str(cfg.device.name) == "cuda":
        check_cuda(int(cfg.device.index))
    if cfg.get("translations") is not None and cfg.translations.table:
        from onnxbuild.translations import translation_table

        translation_table(cfg.translations)  # imports torch: resolved here, not in preflight
    if not cfg.get("deterministic"):
        return None
    import torch

    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]

    return restore


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
        import traceback

        from onnxbuild.logutil import FILE_ONLY
        from onnxbuild.stages.capture import first_line

        log.error("unexpected failure in stage %s:\n%s", spec.name, traceback.format_exc(), extra=FILE_ONLY)
        cause = exc.__cause__ or exc.__context__
        because = f" (caused by {type(cause).__name__}: {first_line(cause)})" if cause is not None else ""
        raise StageError(
            f"{type(exc).__name__}: {first_line(exc)}{because}",
            stage=spec.name,
            hint="unexpected failure; the traceback is in the run's onnxbuild.log",
        ) from exc
    if upstream is not None and "io" not in artifact.info and "io" in upstream.info:
        artifact.info["io"] = upstream.info["io"]
    return artifact


class CorruptEntry(Exception):
    """A cache entry failed its full digest check when its file was about to be used."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def stage_key(spec: StageSpec, cfg: DictConfig, upstream: Artifact | None) -> str:
    """The cache key: stage and code version, the config it reads, input file digests, upstream
    artifact digest, and the versions of the tools it uses. No paths, times or host names."""
    from onnxbuild.cache import compute_key

    config = {key: _plain(OmegaConf.select(cfg, key, default=None)) for key in spec.reads}
    # Input files count by content, not by where they are.
    for file_key in INPUT_FILE_KEYS:
        head, _, tail = file_key.partition(".")
        node = config.get(head) if file_key not in config else None
        if isinstance(node, dict) and node.get(tail) is not None:
            node[tail] = "<input file>"
    parts = {
        "stage": spec.name,
        "stage_version": stage_version(spec.module),
        "onnxbuild_source": source_digest(),
        "config": config,
        "input_files": input_digests(cfg, spec.reads),
        "model_code": target_identity(str(cfg.model._target_)) if spec.uses_model else None,
        "upstream": None if upstream is None else {"sha256": upstream.digest, "io": upstream.info.get("io")},
        "tools": {name: versions.package_version(name) for name in spec.tools},
        "python": platform_info() | {"version": platform.python_version()},
    }
    return compute_key(parts)


def open_cache(cfg: DictConfig) -> StageCache | None:
    section = cfg.get("cache")
    if section is None or not section.enabled:
        return None
    from onnxbuild.cache import StageCache

    root = Path(str(section.root)).expanduser()
    root.mkdir(parents=True, exist_ok=True)  # an unusable root fails here, before any stage
    if not os.access(root, os.W_OK):
        raise PermissionError(f"not writable: {root}")
    max_size = section.get("max_size")
    if max_size:
        from onnxbuild.cache import parse_size

        try:
            parse_size(str(max_size))
        except ValueError:
            raise ConfigError(
                f"not a size: {max_size!r}", key="cache.max_size", hint="e.g. 500M, 20G, or null for no limit"
            ) from None
    return StageCache(root)


def _json_roundtrip(info: dict[str, Any]) -> dict[str, Any]:
    """Artifact info as the cache returns it, so cached and computed builds see the same types."""
    import json

    return json.loads(canonical_json(info))


@dataclass
class _Attempt:
    records: list[dict[str, Any]] = field(default_factory=list)
    onnx_artifact: Artifact | None = None
    onnx_entry: Entry | None = None
    failure: BuildError | None = None
    restore: Callable[[], None] | None = None


def _run_stages(ctx: BuildContext, cache: StageCache | None) -> _Attempt:
    """One pass over the stages: each is restored from the cache or run (and then stored)."""
    attempt = _Attempt()
    try:
        _stage_loop(ctx, cache, attempt)
    finally:
        if attempt.restore is not None:
            attempt.restore()
    return attempt


def _stale_entry(cache: StageCache, spec: StageSpec, entry: Entry) -> bool:
    """A cache entry that recorded local modules loaded at run time (capture does: its factory's
    dynamic imports) one of which has changed since: its key could not cover them."""
    from onnxbuild.fingerprint import changed_runtime_modules

    changed = changed_runtime_modules(entry.info.get("runtime_modules") or {})
    if not changed:
        return False
    log.warning(
        "stage %s: cached entry %s not reused: local module(s) %s changed since (imported at run time)",
        spec.name,
        entry.key[:12],
        ", ".join(changed[:5]),
    )
    with cache.lock(entry.key):
        cache.discard(entry.key, f"stale: {', '.join(changed[:5])} changed")
    return True


def _prepare_runtime(cfg: DictConfig) -> Callable[[], None] | None:
    """prepare_runtime, its errors counted as the configuration's (exit 2): no stage has run."""
    try:
        return prepare_runtime(cfg)
    except BuildError as exc:
        exc.exit_code = ConfigError.exit_code
        raise


def _stage_loop(ctx: BuildContext, cache: StageCache | None, attempt: _Attempt) -> None:
    cfg = ctx.cfg
    upstream: Artifact | None = None
    upstream_entry: Entry | None = None
    prepared = False
    if cfg.get("translations") is not None and cfg.translations.table:
        # Translation entries resolve only with torch imported; check them before any stage is
        # restored, so a bad entry leaves no stage output behind (no torch-free no-op rebuild then).
        prepared = True
        attempt.restore = _prepare_runtime(cfg)
    for spec in STAGES:
        if not spec.enabled(cfg):
            attempt.records.append({"name": spec.name, "status": "skipped"})
            continue
        t0 = time.perf_counter()
        key = stage_key(spec, cfg, upstream) if cache is not None and spec.cacheable else None
        entry = cache.lookup(key) if cache is not None and key is not None else None
        if entry is not None and _stale_entry(cache, spec, entry):
            entry = None
        status = "cached"
        if entry is None and not prepared:
            # Outside the stage's error handling: a bad device or translation entry is a config
            # error (exit 2, nothing written), not a failure of the stage that happened to run first.
            prepared = True
            attempt.restore = _prepare_runtime(cfg)
        log.info("stage %s ...", spec.name)
        try:
            if entry is None:
                if upstream_entry is not None:
                    problem = upstream_entry.check(full=True)  # about to read it: check every byte
                    if problem is not None:
                        raise CorruptEntry(upstream_entry.key, problem)
                artifact, entry, status = _compute_or_wait(spec, ctx, upstream, cache, key)
            else:
                log.info("stage %s: cache hit %s", spec.name, key[:12])
            if entry is not None and status == "cached":
                try:
                    artifact = _restore(spec, ctx, upstream, entry)
                except OSError as exc:  # e.g. pruned by another process meanwhile
                    raise CorruptEntry(entry.key, f"cannot restore: {exc}") from exc
        except BuildError as exc:
            attempt.records.append(
                {
                    "name": spec.name,
                    "status": "failed",
                    "seconds": round(time.perf_counter() - t0, 3),
                    "error": exc.one_line(),
                }
            )
            attempt.failure = exc
            break
        seconds = time.perf_counter() - t0
        log.info("stage %s %s in %.2fs", spec.name, "restored" if status == "cached" else "done", seconds)
        record = {
            "name": spec.name,
            "status": "ok",
            "seconds": round(seconds, 3),
            "artifact": artifact.path.relative_to(ctx.run_dir).as_posix(),
            "sha256": artifact.digest,
            "info": {k: v for k, v in artifact.info.items() if k not in ("io", "report")},
        }
        if key is not None:
            record["cache"] = {"hit": status == "cached", "key": key}
        attempt.records.append(record)
        if artifact.path.suffix == ".onnx" and not spec.passthrough:
            attempt.onnx_artifact = artifact
            attempt.onnx_entry = entry
        if spec.name == "capture":
            ctx.facts["capture_strategy"] = artifact.info["strategy"]
            ctx.facts["constants"] = artifact.info["constants"]
            ctx.facts["mutated_buffers"] = artifact.info.get("mutated_buffers") or []
            ctx.facts["io"] = artifact.info["io"]
            if artifact.info.get("model_init"):
                ctx.facts["model_init"] = artifact.info["model_init"]
        if spec.name == "validate":
            ctx.facts["validation"] = artifact.info["report"]
        # The next stage gets the live object (no save-then-reload of the same bytes); after a
        # cache hit it loads the file instead. Both give the same bytes downstream
        # (tests/test_cache.py::test_partly_cached_build_gives_the_cold_build_bytes).
        if not spec.passthrough:
            upstream_entry = entry
        upstream = artifact


def _compute_or_wait(
    spec: StageSpec,
    ctx: BuildContext,
    upstream: Artifact | None,
    cache: StageCache | None,
    key: str | None,
) -> tuple[Artifact, Entry | None, str]:
    """Run the stage under its key's lock; if another build stored the key meanwhile, reuse it."""
    if cache is None or key is None:
        return _run_and_normalize(spec, ctx, upstream), None, "ok"
    with cache.lock(key):
        entry = cache.lookup(key, locked=True)
        if entry is not None:
            log.info("stage %s: computed by another build meanwhile, cache hit %s", spec.name, key[:12])
            return Artifact(path=ctx.run_dir, digest=""), entry, "cached"
        before = len(ctx.warnings)
        artifact = _run_and_normalize(spec, ctx, upstream)
        files = {p.relative_to(ctx.run_dir).as_posix(): p for p in spec.outputs(artifact, ctx)}
        primary = None if spec.passthrough else artifact.path.relative_to(ctx.run_dir).as_posix()
        entry = cache.store(key, spec.name, files, artifact.info, primary, ctx.warnings[before:])
    return artifact, entry, "ok"


def _run_and_normalize(spec: StageSpec, ctx: BuildContext, upstream: Artifact | None) -> Artifact:
    artifact = _run_stage(spec, ctx, upstream)
    artifact.info = _json_roundtrip(artifact.info)
    return artifact


def _restore(spec: StageSpec, ctx: BuildContext, upstream: Artifact | None, entry: Entry) -> Artifact:
    """The stage's artifact from a cache entry: files linked into the run dir, info and warnings."""
    entry.restore(ctx.run_dir)
    for message in entry.meta.get("warnings", []):
        ctx.warn(message)
    info = dict(entry.info)
    if spec.passthrough and upstream is not None:
        return Artifact(path=upstream.path, digest=upstream.digest, info=info)
    primary = entry.primary
    return Artifact(path=ctx.run_dir / primary, digest=entry.files[primary]["sha256"], info=info)


def _clear_stage_outputs(run_dir: Path) -> None:
    """Start from an empty stages/: restored files are links into the cache and must never be
    written through, so a stage always writes a fresh file."""
    shutil.rmtree(run_dir / "stages", ignore_errors=True)
    (run_dir / "validation.json").unlink(missing_ok=True)
    (run_dir / "benchmark.json").unlink(missing_ok=True)


def run_build(cfg: DictConfig, run_dir: Path) -> BuildResult:
    """Run every enabled stage in order; publish model.onnx only when validation passed."""
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        specs = preflight(cfg)
    except BuildError as exc:
        exc.exit_code = ConfigError.exit_code  # found before any work: the configuration's fault
        raise
    try:
        cache = open_cache(cfg)
    except OSError as exc:
        raise ConfigError(
            f"cannot use the stage cache directory: {exc}",
            key="cache.root",
            hint="point cache.root (or ONNXBUILD_CACHE_DIR) at a writable directory, or use cache=off",
        ) from exc
    for tries_left in range(2, -1, -1):
        ctx = BuildContext(cfg=cfg, run_dir=run_dir, specs=specs)
        _clear_stage_outputs(run_dir)
        try:
            attempt = _run_stages(ctx, cache)
            model_path = _publish(run_dir, attempt.onnx_artifact, attempt.failure)
            manifest = build_manifest(cfg, ctx, run_dir, model_path)
            _check_published(manifest, model_path, attempt)
            break
        except CorruptEntry as exc:
            if cache is None or tries_left == 0:
                raise StageError(
                    f"cache entry {exc.key[:12]} stays corrupt: {exc.problem}",
                    key="cache.root",
                    hint="run `python -m onnxbuild.cache clear` or build with cache=off",
                ) from exc
            with cache.lock(exc.key):
                cache.discard(exc.key, exc.problem)
    failure = attempt.failure
    stage_records = attempt.records
    bundle = None
    if failure is None and model_path is not None and cfg.get("release") is not None and cfg.release.enabled:
        from onnxbuild.release import write_bundle

        bundle = write_bundle(cfg, run_dir, manifest)
    report = build_report(cfg, ctx, run_dir, stage_records, started, failure, model_path)
    report["cache"] = _cache_summary(cache, stage_records)
    if cache is not None and report["cache"]["computed"]:
        report["cache"]["pruned"] = _prune_cache(cache, cfg.cache.get("max_size"))
    report["release_bundle"] = str(bundle.resolve()) if bundle else None
    write_json_atomic(run_dir / "report.json", report)
    write_json_atomic(run_dir / "manifest.json", manifest)
    write_sha256sums(run_dir, manifest)
    if failure is not None:
        raise failure
    return BuildResult(
        run_dir=run_dir, model_path=model_path, manifest=manifest, report=report, stages=stage_records
    )


def _prune_cache(cache: StageCache, max_size: str | None) -> int:
    """Keep the cache under cache.max_size after a build that stored new entries (LRU first).

    Files already linked into run dirs stay valid there (hard links); only the entries go.
    """
    if not max_size:
        return 0
    from onnxbuild.cache import parse_size

    removed = cache.prune(max_bytes=parse_size(str(max_size)))
    if removed:
        log.info("cache: pruned %d least recently used entries (cache.max_size=%s)", len(removed), max_size)
    return len(removed)


def _check_published(manifest: dict[str, Any], model_path: Path | None, attempt: _Attempt) -> None:
    """The published model is hashed for the manifest anyway: it must be the artifact's digest."""
    if model_path is None or attempt.onnx_artifact is None:
        return
    if model_path.with_name(model_path.name + ".data").exists():
        # Re-saved under the published name (external data location), so the bytes differ from the
        # stage file: check the cache entry it came from instead.
        problem = attempt.onnx_entry.check(full=True) if attempt.onnx_entry is not None else None
        if problem is not None:
            raise CorruptEntry(attempt.onnx_entry.key, problem)
        return
    published = next((a for a in manifest["artifacts"] if a["path"] == model_path.name), None)
    if published is None or published["sha256"] == attempt.onnx_artifact.digest:
        return
    if attempt.onnx_entry is not None:
        raise CorruptEntry(
            attempt.onnx_entry.key,
            f"{model_path.name} has sha256 {published['sha256'][:12]}, "
            f"expected {attempt.onnx_artifact.digest[:12]}",
        )
    raise StageError(
        f"{model_path.name} changed while it was published",
        hint="another process is writing into the run directory",
    )


def _cache_summary(cache: StageCache | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    if cache is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "root": str(cache.root.resolve()),
        "hits": [r["name"] for r in records if r.get("cache", {}).get("hit")],
        "computed": [r["name"] for r in records if "cache" in r and not r["cache"]["hit"]],
    }


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
    # A copy, never a hard link: the stage file may be shared with the cache and other run dirs,
    # and editing the published model in place (read-only bits do not stop root) must not touch them.
    tmp = run_dir / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    shutil.copyfile(artifact.path, tmp)
    os.replace(tmp, target)
    return target


def build_manifest(
    cfg: DictConfig, ctx: BuildContext, run_dir: Path, model_path: Path | None
) -> dict[str, Any]:
    """Everything that defines the build and its outputs, and nothing that varies run to run."""
    config = defining_config(cfg)
    inputs = input_digests(cfg)
    artifacts = []
    if model_path is not None:
        artifacts.append(describe_file(model_path, run_dir))
        data = model_path.with_name(model_path.name + ".data")
        if data.exists():
            artifacts.append(describe_file(data, run_dir))
    return {
        "onnxbuild_version": __version__,
        "onnxbuild_git": git_info(),
        "onnxbuild_source_sha256": source_digest(),
        "config": config,
        "config_sha256": text_sha256(canonical_json(config)),
        "inputs": inputs,
        # The model factory's code: its package version, or the digests of its local modules.
        "model_code": target_identity(str(cfg.model._target_)),
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
            "outputs_compared": validation.get("outputs_compared"),
            "outputs_not_compared": validation.get("outputs_not_compared"),
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
        "benchmark": ctx.facts.get("benchmark"),
    }


def write_sha256sums(run_dir: Path, manifest: dict[str, Any]) -> None:
    lines = [f"{a['sha256']}  {a['path']}\n" for a in manifest["artifacts"]]
    write_text_atomic(run_dir / "SHA256SUMS", "".join(lines))

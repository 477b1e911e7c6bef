"""Command line: `python -m onnxbuild [overrides]` (Hydra). BuildError -> one line and exit code.

In a multirun every job is isolated: whatever it raises is recorded in its own status.json (and
the traceback in its log), the sweep goes on, and the process exits non-zero at the end if any
job failed (read back from disk by the SweepSummary callback, so it holds for every launcher).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from onnxbuild import callbacks, gpus
from onnxbuild.errors import BuildError
from onnxbuild.jobstatus import JobStatus, one_line
from onnxbuild.logutil import FILE_ONLY
from onnxbuild.schema import register

log = logging.getLogger("onnxbuild")

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def config_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's conf/ (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"onnxbuild config directory not found next to {here}")


register()
# Resolvers used by conf/hydra/launcher presets (registered wherever this module is imported,
# which includes every launcher worker: they unpickle the task function from here).
OmegaConf.register_new_resolver("onnxbuild_gpus_per_task", gpus.gpus_per_task, replace=True)
OmegaConf.register_new_resolver("onnxbuild_local_gpus", gpus.local_gpu_count, replace=True)
# conf/hydra/launcher/submitit_*.yaml deliberately share the plugin's names so that
# `hydra/launcher=submitit_slurm` picks our settings, typed by the plugin's schema.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")


def _pin_gpu(
    cfg: DictConfig, job_num: int, launcher_target: str, sweep_dir: Path | None = None
) -> str | None:
    """device=cuda in a parallel launcher's worker: this job sees exactly one GPU."""
    if str(cfg.device.name) != "cuda" or launcher_target == BASIC_LAUNCHER:
        return None
    gpu = gpus.pin_gpu(job_num, lock_dir=None if sweep_dir is None else sweep_dir / ".gpu_locks")
    if gpu is not None:
        with open_dict(cfg):
            cfg.device.index = 0  # the only GPU this process can see
    return gpu


# Set by a single (not multirun) build: then nothing is left to tear down that matters (no launcher
# processes, Ray cluster or executor whose atexit hooks must run).
_single_build_ran = False


def _task(cfg: DictConfig) -> None:
    global _single_build_ran
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    _single_build_ran = not multirun
    _log_native_crashes(run_dir)
    job_num = int(hydra_cfg.job.num) if multirun else 0
    status = JobStatus(run_dir, job=job_num if multirun else None, overrides=list(hydra_cfg.overrides.task))
    where = f"job {job_num} ({' '.join(hydra_cfg.overrides.task)}): " if multirun else ""
    try:
        launcher = str(hydra_cfg.launcher.get("_target_", ""))
        gpu = _pin_gpu(cfg, job_num, launcher, Path(str(hydra_cfg.sweep.dir))) if multirun else None
        status.start(gpu=gpu)
        from onnxbuild.pipeline import run_build
        from onnxbuild.summary import format_summary

        try:
            result = run_build(cfg, run_dir)
        except Exception as exc:
            from onnxbuild.hydra_errors import as_config_error

            # An OmegaConf error inside the build (a mandatory `???` value left out) is the config's fault.
            error = None if isinstance(exc, BuildError) else as_config_error(exc)
            if error is None:
                raise
            raise error from exc
    except BuildError as exc:
        status.failed(stage=exc.stage or "preflight", reason=_reason(exc), exit_code=exc.exit_code)
        log.error("build failed: %s", exc.one_line(), extra=FILE_ONLY)
        full_error = _user_wants_tracebacks()
        if full_error and not multirun:
            raise
        if full_error:  # in a sweep, the traceback goes to the job's log; the sweep goes on
            log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
        print(f"onnxbuild: error: {where}{exc.one_line()}", file=sys.stderr, flush=True)
        if multirun:
            return
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Not a BuildError: a bug or an environment fault. Keep the traceback in the job's log.
        status.failed(stage="internal", reason=f"{type(exc).__name__}: {exc}", exit_code=1)
        log.error("unexpected failure:\n%s", traceback.format_exc(), extra=FILE_ONLY)
        if not multirun and _user_wants_tracebacks():
            raise
        message = one_line(f"{type(exc).__name__}: {exc}", limit=300)
        print(f"onnxbuild: error: {where}[internal] {message} (traceback in {run_dir / 'onnxbuild.log'})",
              file=sys.stderr, flush=True)  # fmt: skip
        if not multirun:
            sys.exit(1)
        return
    status.ok()
    log.info("%s", format_summary(result.report))


_crash_log = None


def _log_native_crashes(run_dir: Path) -> None:
    """A segfault in native code (onnxruntime, torch) kills the process with no Python error: write
    the Python traceback of every thread into the run's log, where status.json ("running") points."""
    global _crash_log
    import faulthandler

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / "onnxbuild.log", "a", encoding="utf-8")  # noqa: SIM115 (kept open on purpose)
    except OSError:
        return
    faulthandler.enable(file=handle, all_threads=True)
    if _crash_log is not None:
        _crash_log.close()
    _crash_log = handle


def _reason(exc: BuildError) -> str:
    """The one-line reason without the stage prefix (status.json has the stage in its own field)."""
    key = f"{exc.key}: " if exc.key else ""
    hint = f" (hint: {exc.hint})" if exc.hint else ""
    return f"{key}{exc.message}{hint}"


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _task(cfg)


# main() sets HYDRA_FULL_ERROR so that Hydra raises its composition errors to us (to print them on
# one line) instead of printing them itself; this marks that the user did not ask for tracebacks.
COMPACT_ERRORS_ENV = "ONNXBUILD_COMPACT_ERRORS"


def _user_wants_tracebacks() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(COMPACT_ERRORS_ENV) != "1"


def _exit_with_one_line(exc: Exception) -> None:
    """A composition error as `key: message (hint)`, anything else as one `[internal]` line."""
    from onnxbuild.hydra_errors import as_config_error

    error = as_config_error(exc)
    if error is not None:
        print(f"onnxbuild: error: {error.one_line()}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    message = one_line(f"{type(exc).__name__}: {exc}", limit=300)
    print(f"onnxbuild: error: [internal] {message} (hint: HYDRA_FULL_ERROR=1 prints the traceback)",
          file=sys.stderr, flush=True)  # fmt: skip
    sys.exit(1)


def main() -> None:
    callbacks.reset()
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[COMPACT_ERRORS_ENV] = "1"
    from onnxbuild.overrides import rewrite_dynamic_overrides

    try:
        sys.argv = [sys.argv[0], *rewrite_dynamic_overrides(sys.argv[1:])]
    except BuildError as exc:
        print(f"onnxbuild: error: {exc.one_line()}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    try:
        _hydra_main()
    except SystemExit as exc:
        # A launcher raised (a job's process died): the summary still shows what finished.
        if exc.code not in (0, None) and callbacks.summarize_pending() is not None:
            print("onnxbuild: the sweep was aborted; summary of the jobs so far above", file=sys.stderr)
        raise
    except BrokenPipeError:
        raise  # `--help | head`: entry_point exits quietly
    except Exception as exc:
        # With HYDRA_FULL_ERROR set (above), Hydra raises what a launcher or the composition raised.
        if callbacks.summarize_pending() is not None:
            print("onnxbuild: the sweep was aborted; summary of the jobs so far above", file=sys.stderr)
        if _user_wants_tracebacks():
            raise
        _exit_with_one_line(exc)
    outcome = callbacks.last_outcome()
    if outcome is not None and outcome.failed:
        # Jobs on other processes or machines printed their errors there: repeat them here.
        for row in outcome.failed:
            print(f"onnxbuild: sweep job {row.job} failed [{row.stage}] {row.reason} ({row.run_dir})",
                  file=sys.stderr)  # fmt: skip
        print(f"onnxbuild: {len(outcome.failed)} of {len(outcome.rows)} sweep jobs failed; "
              f"see {outcome.sweep_dir / 'summary.md'}", file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(1)


def entry_point() -> None:
    """The command line: main(), then a fast exit after a single build.

    Interpreter teardown after a build (freeing torch, onnxruntime and the model, module by module)
    takes about 2 s for resnet50, after every artifact is written and the summary printed. A single
    build flushes its logs and output and ends the process with os._exit; sweeps exit normally, so
    launcher atexit hooks (joblib executors, a local Ray cluster) still run.
    """
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    except BrokenPipeError:
        # `python -m onnxbuild --help | head`: the reader left; nothing to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os._exit(0)
    if not _single_build_ran:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(code, str):
        print(code, file=sys.stderr, flush=True)
        code = 1
    os._exit(code or 0)

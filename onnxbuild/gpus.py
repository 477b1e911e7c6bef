"""One GPU per sweep job: pick it from the job number, pin it with CUDA_VISIBLE_DEVICES.

Parallel launchers (joblib, submitit) run jobs in worker processes. Each worker must choose its
GPU before CUDA initialises in it (CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation), so
the choice is made from the environment and `nvidia-smi`, never from torch. A worker that
already pinned a GPU keeps it for later jobs: changing the variable afterwards has no effect.

Workers that run at the same time must not pick the same GPU, even when their first jobs' numbers
collide modulo the GPU count: a worker claims its GPU with a lock file in the sweep dir (held
until the process exits), starting from the job number's GPU and moving on to the next free one.
When every GPU is claimed (more workers than GPUs), it shares the job number's GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("onnxbuild")

ENV = "CUDA_VISIBLE_DEVICES"
# Set to 0 to keep CUDA_VISIBLE_DEVICES untouched in sweep jobs.
PIN_SWITCH = "ONNXBUILD_PIN_GPU"

# The GPU this process pinned (None: not pinned yet). Reused workers keep their first GPU.
_pinned: str | None = None
# The lock file claiming that GPU; referenced so it stays held for the life of the process.
_claim: Any = None


def parse_visible(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list; None when unset (all GPUs visible). '' or '-1' hide all."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [] if items == ["-1"] else items


def nvidia_smi_gpus() -> list[str]:
    """GPU indices from nvidia-smi (does not initialise CUDA in this process); [] without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def visible_gpus(
    env: Mapping[str, str] | None = None, probe: Callable[[], list[str]] | None = None
) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists."""
    env = os.environ if env is None else env
    listed = parse_visible(env.get(ENV))
    if listed is not None:
        return listed
    return (probe or nvidia_smi_gpus)()


def select_gpu(job_num: int, gpus: list[str]) -> str | None:
    """Round robin: job n gets gpus[n % len(gpus)]; None when there is no GPU to choose."""
    if not gpus:
        return None
    return gpus[job_num % len(gpus)]


def cuda_initialised() -> bool:
    """Whether CUDA already started in this process (then CUDA_VISIBLE_DEVICES is fixed)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a broken or CPU-only torch: nothing was initialised
        return False


def claim_gpu(job_num: int, gpus: list[str], lock_dir: Path | None) -> str | None:
    """The job number's GPU, or the next one no other live worker holds (lock files in lock_dir)."""
    global _claim
    if not gpus:
        return None
    if lock_dir is None or len(gpus) == 1:
        return select_gpu(job_num, gpus)
    from filelock import FileLock, Timeout

    lock_dir.mkdir(parents=True, exist_ok=True)
    start = job_num % len(gpus)
    for gpu in gpus[start:] + gpus[:start]:
        lock = FileLock(str(lock_dir / f"gpu-{gpu}.lock"), timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            continue
        _claim = lock
        return gpu
    gpu = select_gpu(job_num, gpus)
    log.warning("every GPU is claimed by another worker; job %d shares GPU %s", job_num, gpu)
    return gpu


def pin_gpu(job_num: int, env: dict[str, str] | None = None, lock_dir: Path | None = None) -> str | None:
    """Restrict this process to one GPU chosen from the job number; returns the GPU id pinned.

    Returns the previously pinned GPU in a reused worker, and None (leaving the environment
    alone) when pinning is switched off, CUDA already initialised, or no GPU is listed.
    """
    global _pinned
    env = os.environ if env is None else env
    if env.get(PIN_SWITCH, "1") == "0":
        return None
    if _pinned is not None:
        log.info("GPU %s stays pinned in this worker process (%s=%s)", _pinned, ENV, env.get(ENV))
        return _pinned
    if cuda_initialised():
        log.warning("CUDA is already initialised in this process; %s is left as %s", ENV, env.get(ENV))
        return None
    gpu = claim_gpu(job_num, visible_gpus(env), lock_dir)
    if gpu is None:
        return None
    env[ENV] = gpu
    _pinned = gpu
    log.info("job %d pinned to GPU %s (%s=%s)", job_num, gpu, ENV, gpu)
    return gpu


def gpus_per_task(device: str) -> int | None:
    """Resolver for launcher presets: one GPU per task for device=cuda, none for cpu."""
    return 1 if str(device) == "cuda" else None


def local_gpu_count(device: str) -> int | None:
    """Resolver for submitit_local: make every GPU visible to each job for device=cuda (the job
    then pins one of them), none for cpu (submitit_local hides all GPUs when this is null)."""
    if str(device) != "cuda":
        return None
    return len(visible_gpus()) or None

"""onnxruntime sessions that cannot take the build down with them.

onnxruntime's CPU graph optimizer can crash the process (SIGSEGV) while it builds a session for
some float16 graphs at ORT_ENABLE_ALL (an attention block is enough; microsoft/onnxruntime#15494).
In-process, that kills the build with no error line and leaves status.json at "running". For the
graphs at risk (float16/bfloat16 on the CPU provider) a child process builds the session first, at
each optimization level from the highest down, and the build uses the first level that survives.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxbuild.errors import StageError

if TYPE_CHECKING:
    import onnx

# Highest first; names as in onnxruntime.GraphOptimizationLevel.
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")
DEFAULT_LEVEL = LEVELS[0]
PROBE_TIMEOUT_S = 600

_PROBE = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, sys.argv[2])
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
"""


def session_options(level: str = DEFAULT_LEVEL) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return options


def uses_low_precision(types: set[int]) -> bool:
    """float16 or bfloat16 among a graph's tensor types (onnx_utils.tensor_types)."""
    import onnx

    return bool(types & {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def _probe(path: Path, level: str) -> int:
    """Exit code of a child process that builds a CPU session at `level` (negative: killed by a signal)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), level],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return -signal.SIGKILL
    return proc.returncode


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def safe_level(
    path: Path, device_name: str, stage: str, model: onnx.ModelProto | None = None
) -> tuple[str, str | None]:
    """The highest optimization level at which onnxruntime builds a CPU session for `path` without
    crashing, and a warning when it is not the default. Graphs not at risk are not probed.
    `model`: the graph already in memory (else its file is read, weights left out)."""
    if device_name != "cpu":
        return DEFAULT_LEVEL, None
    from onnxbuild.onnx_utils import file_tensor_types, tensor_types

    types = tensor_types(model) if model is not None else file_tensor_types(path)
    if not uses_low_precision(types):
        return DEFAULT_LEVEL, None
    crashes: list[str] = []
    for level in LEVELS:
        code = _probe(path, level)
        if code >= 0:
            # 0: it works. > 0: a Python-level error (e.g. a missing kernel), which the in-process
            # session raises again with its own message; only a crash makes a lower level worth trying.
            if not crashes:
                return level, None
            return level, (
                f"onnxruntime crashed ({'; '.join(crashes)}) building a CPU session for this "
                "float16/bfloat16 graph (an onnxruntime bug, microsoft/onnxruntime#15494); validated with "
                f"graph_optimization_level={level}: deploy on CPU with that level, or validate with device=cuda"
            )
        crashes.append(f"{_signal_name(code)} at {level}")
    raise StageError(
        f"onnxruntime crashes building a CPU session for this float16/bfloat16 graph at every "
        f"optimization level ({', '.join(crashes)})",
        stage=stage,
        key="device",
        hint="validate with device=cuda, or build the model and inputs in float32",
    )

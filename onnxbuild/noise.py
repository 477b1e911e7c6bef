"""The float32 noise floor of a model: how far its own float32 eager run is from float64.

When onnxruntime misses a tolerance by an amount this model already shows between float32 and
float64 in eager PyTorch, no runtime could meet it: the weights (often a random init), not the
export, are the problem. Measured only on a failure, on the failing inputs.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxbuild.inputs import split_call

if TYPE_CHECKING:
    from onnxbuild.context import BuildContext

log = logging.getLogger("onnxbuild")
# A float64 copy of a bigger model costs more memory than the answer is worth.
MAX_PARAMETERS = 300_000_000


def float32_noise(ctx: BuildContext, values: dict[str, Any], reference: list[np.ndarray]) -> float | None:
    """max |float32 eager - float64 eager| over the outputs; None when it does not apply."""
    import torch
    from torch.utils._pytree import tree_flatten

    model = ctx.model()
    params = list(model.parameters()) + list(model.buffers())
    floats = [p for p in params if p.is_floating_point()]
    if not floats or any(p.dtype != torch.float32 for p in floats):
        return None
    if sum(p.numel() for p in params) > MAX_PARAMETERS:
        return None
    tensors = [v for v in values.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if any(t.dtype != torch.float32 for t in tensors):
        return None
    try:
        model64 = copy.deepcopy(model).double()
        values64 = {
            k: (v.double() if v.is_floating_point() else v).to(ctx.torch_device)
            if isinstance(v, torch.Tensor)
            else v
            for k, v in values.items()
        }
        args, kwargs = split_call(ctx.specs, values64)
        with torch.no_grad():
            outputs = tree_flatten(model64(*args, **kwargs))[0]
    except Exception as exc:  # some models cannot run in float64: then there is no figure
        log.info("float32 noise floor not measured: %s", type(exc).__name__)
        return None
    worst = 0.0
    for ref, out in zip(reference, outputs, strict=False):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            continue
        exact = out.detach().cpu().numpy()
        if exact.shape != np.shape(ref) or not exact.size:
            continue
        worst = max(worst, float(np.nanmax(np.abs(np.asarray(ref, dtype=np.float64) - exact))))
    return worst


def noise_clause(error: float, noise: float | None) -> str:
    """One clause for the error line: the mismatch next to the model's own float32 noise."""
    if noise is None:
        return ""
    text = f"; float32 eager PyTorch itself differs from float64 by {noise:.2g} on these inputs"
    if noise > 0 and error <= 4 * noise:
        text += (
            ": the mismatch is at this model's float32 noise floor, not a wrong export "
            "(trained weights are usually far better conditioned: give model.checkpoint, or raise the tolerance)"
        )
    return text

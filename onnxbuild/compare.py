"""Numeric comparison of one output: statistics and an allclose verdict.

Kept free of torch so reports can be recomputed from saved arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compare_output(reference: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Statistics that explain a verdict: how far off, where, and what tolerance would have passed."""
    result: dict[str, Any] = {
        "shape": list(reference.shape),
        "actual_shape": list(actual.shape),
        "dtype": str(reference.dtype),
        "actual_dtype": str(actual.dtype),
        "atol": atol,
        "rtol": rtol,
    }
    if reference.shape != actual.shape:
        result.update(passed=False, reason=f"shape {list(actual.shape)} != reference {list(reference.shape)}")
        return result
    if reference.dtype != actual.dtype:
        result["dtype_mismatch"] = True
    ref = reference.astype(np.float64) if reference.dtype != np.bool_ else reference.astype(np.float64)
    act = actual.astype(np.float64) if actual.dtype != np.bool_ else actual.astype(np.float64)
    ref_nonfinite = int(np.count_nonzero(~np.isfinite(ref)))
    act_nonfinite = int(np.count_nonzero(~np.isfinite(act)))
    result["reference_nonfinite"] = ref_nonfinite
    result["actual_nonfinite"] = act_nonfinite
    same_nonfinite = np.array_equal(np.isnan(ref), np.isnan(act)) and np.array_equal(
        np.where(np.isinf(ref), ref, 0), np.where(np.isinf(act), act, 0)
    )
    finite = np.isfinite(ref) & np.isfinite(act)
    diff = np.abs(ref - act)[finite] if ref.size else np.zeros(0)
    absref = np.abs(ref)[finite] if ref.size else np.zeros(0)
    if diff.size:
        rel = diff / np.maximum(absref, np.finfo(np.float64).tiny)
        result.update(
            max_abs=float(diff.max()),
            mean_abs=float(diff.mean()),
            p99_abs=float(np.quantile(diff, 0.99)),
            max_rel=float(rel.max()),
            min_atol_to_pass=float(np.max(np.maximum(diff - rtol * absref, 0.0))),
            min_rtol_to_pass=_min_rtol(diff, absref, atol),
        )
    else:
        result.update(
            max_abs=0.0, mean_abs=0.0, p99_abs=0.0, max_rel=0.0, min_atol_to_pass=0.0, min_rtol_to_pass=0.0
        )
    result["reference_std"] = float(np.std(ref[np.isfinite(ref)])) if np.isfinite(ref).any() else 0.0
    result["reference_max_abs"] = (
        float(np.max(np.abs(ref[np.isfinite(ref)]))) if np.isfinite(ref).any() else 0.0
    )
    close = bool(np.all(diff <= atol + rtol * absref)) if diff.size else True
    passed = close and same_nonfinite
    result["passed"] = passed
    if not same_nonfinite:
        result["reason"] = f"NaN/Inf differ (reference {ref_nonfinite}, onnxruntime {act_nonfinite})"
    elif not close:
        result["reason"] = f"max abs error {result['max_abs']:.3g} > atol {atol:g} + rtol {rtol:g}*|ref|"
    return result


def _min_rtol(diff: np.ndarray, absref: np.ndarray, atol: float) -> float:
    over = diff > atol
    if not over.any():
        return 0.0
    if np.any(absref[over] == 0):
        return float("inf")
    return float(np.max((diff[over] - atol) / absref[over]))

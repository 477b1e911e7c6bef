"""Numeric comparison of one output: statistics and an allclose verdict.

Kept free of torch so reports can be recomputed from saved arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Lowest to highest: a build's precision is the lowest float precision it involves.
PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")


def lowest_precision(dtypes: list[str]) -> str | None:
    found = [d for d in dtypes if d in PRECISION_ORDER]
    return min(found, key=PRECISION_ORDER.index) if found else None


def resolve_tolerance(
    name: str,
    output_dtype: str,
    build_precision: str | None,
    section: Any,
) -> tuple[float, float, str]:
    """(atol, rtol, source) for one output: per-output override > global atol/rtol > precision default.

    Integer and bool outputs are exact unless overridden. `section` is the validation config.
    """
    per_output = (section.get("outputs") or {}).get(name) or {}
    defaults = section.get("precision_defaults") or {}
    if output_dtype in PRECISION_ORDER:
        precision = lowest_precision([output_dtype, *([build_precision] if build_precision else [])])
        base = defaults.get(precision) or defaults.get("float32") or {}
        atol, rtol, source = base.get("atol"), base.get("rtol"), f"precision {precision}"
    else:
        atol, rtol, source = 0.0, 0.0, "exact (integer/bool)"
    if section.get("atol") is not None:
        atol, source = section.get("atol"), "validation.atol"
    if section.get("rtol") is not None:
        rtol = section.get("rtol")
    if per_output.get("atol") is not None:
        atol, source = per_output.get("atol"), f"validation.outputs.{name}"
    if per_output.get("rtol") is not None:
        rtol, source = per_output.get("rtol"), f"validation.outputs.{name}"
    return float(atol or 0.0), float(rtol or 0.0), source


def compare_output(
    reference: np.ndarray,
    actual: np.ndarray,
    atol: float,
    rtol: float,
    reference_dtype: str | None = None,
) -> dict[str, Any]:
    """Statistics that explain a verdict: how far off, where, and what tolerance would have passed.

    `reference_dtype` names the framework dtype when the array was converted (bfloat16 -> float32).
    """
    ref_dtype = reference_dtype or str(reference.dtype)
    result: dict[str, Any] = {
        "shape": list(reference.shape),
        "actual_shape": list(actual.shape),
        "dtype": ref_dtype,
        "actual_dtype": str(actual.dtype),
        "atol": atol,
        "rtol": rtol,
    }
    if reference.shape != actual.shape:
        result.update(passed=False, reason=f"shape {list(actual.shape)} != reference {list(reference.shape)}")
        return result
    dtype_ok = ref_dtype == str(actual.dtype) or (ref_dtype == "bfloat16" and actual.dtype == np.float32)
    if not dtype_ok:
        result["dtype_mismatch"] = True
    ref = reference.astype(np.float64) if reference.dtype != np.bool_ else reference.astype(np.float64)
    act = actual.astype(np.float64) if actual.dtype != np.bool_ else actual.astype(np.float64)
    ref_nonfinite = int(np.count_nonzero(~np.isfinite(ref)))
    act_nonfinite = int(np.count_nonzero(~np.isfinite(act)))
    result["reference_nonfinite"] = ref_nonfinite
    result["actual_nonfinite"] = act_nonfinite
    result["reference_nan"] = int(np.count_nonzero(np.isnan(ref)))
    result["actual_nan"] = int(np.count_nonzero(np.isnan(act)))
    result["reference_inf"] = int(np.count_nonzero(np.isinf(ref)))
    result["actual_inf"] = int(np.count_nonzero(np.isinf(act)))
    same_nonfinite = np.array_equal(np.isnan(ref), np.isnan(act)) and np.array_equal(
        np.where(np.isinf(ref), ref, 0), np.where(np.isinf(act), act, 0)
    )
    finite = np.isfinite(ref) & np.isfinite(act)
    diff = np.abs(ref - act)[finite] if ref.size else np.zeros(0)
    absref = np.abs(ref)[finite] if ref.size else np.zeros(0)
    if diff.size:
        # A difference where the reference is exactly 0 has no relative size: inf, not 1e308.
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(
                absref > 0, diff / np.where(absref > 0, absref, 1.0), np.where(diff > 0, np.inf, 0.0)
            )
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
    passed = close and same_nonfinite and dtype_ok
    result["passed"] = passed
    if not dtype_ok:
        result["reason"] = f"dtype {actual.dtype} != reference {ref_dtype}"
    elif not same_nonfinite:
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


def weak_reason(
    references: list[np.ndarray], same_shape_groups: list[list[np.ndarray]], atol: float, rtol: float
) -> str | None:
    """Why comparisons on this output cannot catch a wrong graph, or None when they can.

    non-finite: the reference itself has NaN/Inf (log of a negative, a fully masked softmax row...).
    ~zero: every reference value is within atol of 0, so any near-zero graph passes.
    constant: references for different inputs of the same shape agree within the tolerance, so a
    graph that ignores its input passes.
    """
    floats = [np.asarray(r) for r in references if np.issubdtype(np.asarray(r).dtype, np.floating)]
    nonfinite = sum(int(np.size(r) - np.isfinite(r).sum()) for r in floats)
    if nonfinite:
        total = sum(int(np.size(r)) for r in floats)
        return (
            f"is NaN/Inf in eager PyTorch itself ({nonfinite} of {total} reference values): positions that are "
            "NaN on both sides compare as equal, so a wrong graph can pass there"
        )
    finite = [np.abs(r[np.isfinite(r)]) for r in (x.astype(np.float64) for x in references)]
    peak = max((float(f.max()) for f in finite if f.size), default=0.0)
    if peak <= atol:
        return f"is (near-)zero for every input (max |value| {peak:.3g} <= atol {atol:g})"
    pairs = 0
    for group in same_shape_groups:
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                pairs += 1
                a, b = group[i].astype(np.float64), group[j].astype(np.float64)
                if not np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
                    return None
    if pairs:
        return "does not change with the input (same values, within tolerance, for different inputs)"
    return None

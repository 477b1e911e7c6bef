"""Localize a validation mismatch: which stage, and which node first diverges.

The chain eager -> capture (torch.export) -> fx_optimize -> convert (ONNX) -> simplify is checked
stage by stage on the failing inputs. Inside convert, every intermediate value of stages/convert.onnx
is exposed as a graph output and compared with the FX graph's value of the same name (the dynamo
exporter names each ONNX value after the FX node that produced it, and records the node, its module
path and class hierarchy as node metadata). Inside simplify, the simplified graph's values are
compared with the convert graph's values of the same name. The first node in topological order
whose value differs beyond the tolerance is reported: "output 0 off by 0.8" becomes "node
`node_relu` (Sigmoid), FX node `relu` (aten.relu.default) in module `features.2`, first differs".
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxbuild.export_utils import load_exported_program
from onnxbuild.ort_sessions import DEFAULT_LEVEL, session_options

if TYPE_CHECKING:
    import onnx
    import torch

    from onnxbuild.context import BuildContext

log = logging.getLogger("onnxbuild")


def _to_numpy(value: Any) -> np.ndarray | None:
    import torch

    if not isinstance(value, torch.Tensor):
        return None
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def value_error(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> dict[str, Any] | None:
    """None when `actual` matches `expected` (atol scaled by the value's magnitude), else the error."""
    if expected.shape != actual.shape:
        return {"reason": f"shape {list(actual.shape)} != {list(expected.shape)}", "max_abs": None}
    if expected.size == 0:
        return None
    exp = expected.astype(np.float64)
    act = actual.astype(np.float64)
    if not np.array_equal(np.isnan(exp), np.isnan(act)):
        return {"reason": "NaN positions differ", "max_abs": None}
    finite = np.isfinite(exp) & np.isfinite(act)
    if not np.array_equal(np.where(finite, 0, exp), np.where(finite, 0, act), equal_nan=True):
        return {"reason": "Inf positions differ", "max_abs": None}
    if not finite.any():
        return None
    diff = np.abs(exp - act)[finite]
    ref = np.abs(exp)[finite]
    scale = max(1.0, float(ref.max()))
    if np.all(diff <= atol * scale + rtol * ref):
        return None
    return {
        "reason": "values differ",
        "max_abs": float(diff.max()),
        "max_rel": float((diff / np.maximum(ref, 1e-12)).max()),
        "reference_max_abs": float(ref.max()),
    }


def run_with_intermediates(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    providers: list[Any],
    wanted: set[str] | None = None,
    level: str = DEFAULT_LEVEL,
) -> dict[str, np.ndarray]:
    """Run `model` with every node output (or those in `wanted`) exposed as a graph output."""
    import onnx

    from onnxbuild.onnx_utils import inference_session

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in existing and (wanted is None or name in wanted):
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    session = inference_session(exposed, session_options(level), providers)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def run_plain(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], providers: list[Any], level: str = DEFAULT_LEVEL
) -> list[np.ndarray]:
    """The graph's outputs, run exactly as deployed (no exposed intermediates)."""
    from onnxbuild.onnx_utils import inference_session

    session = inference_session(model, session_options(level), providers)
    return list(session.run(None, feed))


def _metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _module_path(meta: dict[str, str]) -> str | None:
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    try:
        parts = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return None
    # Each scope is the full module path ('', 'features', 'features.2', 'relu'); the last is the node.
    return (parts[-2] if len(parts) >= 2 else "") or "<root>"


def _module_class(meta: dict[str, str]) -> str | None:
    hierarchy = meta.get("pkg.torch.onnx.class_hierarchy")
    try:
        classes = ast.literal_eval(hierarchy) if hierarchy else []
    except (ValueError, SyntaxError):
        return None
    return classes[-2] if len(classes) >= 2 else None


def first_divergence(
    model: onnx.ModelProto,
    actual: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    atol: float,
    rtol: float,
    fx_nodes: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The first node (topological order) with an output value that differs from `expected`."""
    compared = 0
    for node in model.graph.node:
        for value_name in node.output:
            if value_name not in actual or value_name not in expected:
                continue
            compared += 1
            error = value_error(expected[value_name], actual[value_name], atol, rtol)
            if error is None:
                continue
            meta = _metadata(node)
            fx = (fx_nodes or {}).get(value_name)
            fx_name = getattr(fx, "name", None) or meta.get("pkg.torch.onnx.fx_node", "").split(" ")[
                0
            ].lstrip("%")
            module = _module_path(meta)
            if module is None and fx is not None:
                stack = fx.meta.get("nn_module_stack") or {}
                module = next(reversed(stack.values()))[0] if stack else None
            return {
                "onnx_node": node.name,
                "op_type": node.op_type,
                "value": value_name,
                "fx_node": fx_name or None,
                "fx_target": str(fx.target) if fx is not None else None,
                "module": module,
                "module_class": _module_class(meta),
                "values_compared": compared,
                **error,
            }
    return None


def _decomposed_program(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program the exporter translated: same decompositions, so node names match ONNX values."""
    from torch.onnx._internal.exporter import _core, _registration

    return _core._prepare_exported_program_for_export(ep, registry=_registration.ONNXRegistry.from_torchlib())


def fx_intermediates(
    ep: torch.export.ExportedProgram, args: tuple, kwargs: dict
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every call_function value of `ep` by node name (and user outputs by position), and the nodes."""
    import torch

    values: dict[str, np.ndarray] = {}
    nodes: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            array = _to_numpy(result) if n.op == "call_function" else None
            if array is not None:
                values[n.name] = array
                nodes[n.name] = n
            return result

    flat_args, _ = ep._get_flat_args_with_check(args, kwargs)
    with torch.no_grad():
        Recorder(ep.module()).run(*flat_args)
    return values, nodes


def _max_abs(reference: list[np.ndarray], outputs: list[Any]) -> float | None:
    """The largest |difference| over all outputs (None when they cannot be compared)."""
    worst = 0.0
    for ref, out in zip(reference, outputs, strict=False):
        array = out if isinstance(out, np.ndarray) else _to_numpy(out)
        if array is None or np.shape(array) != np.shape(ref):
            return None
        if np.size(ref):
            diff = np.abs(np.asarray(array, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
            worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"))
    return worst


def _outputs_match(reference: list[np.ndarray], outputs: list[Any], atol: float, rtol: float) -> bool:
    for ref, out in zip(reference, outputs, strict=False):
        array = out if isinstance(out, np.ndarray) else _to_numpy(out)
        if array is None or value_error(np.asarray(ref), np.asarray(array), atol, rtol) is not None:
            return False
    return len(reference) == len(outputs)


# A stage is blamed when its artifact alone already shows this share of the final error (or fails
# the tolerance): a mismatch is where the error appears, not where it last crosses the line.
BLAME_SHARE = 0.5


def _blamed_stage(order: list[str], errors: dict[str, float | None], matches: dict[str, bool]) -> str | None:
    final = errors.get(order[-1]) if order else None
    for name in order:
        if not matches[name]:
            return name
        if final and errors.get(name) is not None and errors[name] >= BLAME_SHARE * final:
            return name
    return None


def localize(
    ctx: BuildContext,
    onnx_path: Path,
    args: tuple,
    kwargs: dict,
    feed: dict[str, np.ndarray],
    reference: list[np.ndarray],
    output_names: list[str],
    atol: float,
    rtol: float,
    providers: list[Any],
    level: str = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Find the stage, then the first node, where the failing input set starts to differ.

    Every stage's artifact is run on the failing inputs as it is (ONNX graphs without exposed
    intermediates: exposing them changes what onnxruntime fuses, and so the rounding); the blamed
    stage is the first whose error fails the tolerance or already reaches half the final error.
    """
    import torch
    from torch.utils._pytree import tree_flatten

    from onnxbuild.onnx_utils import load_model

    stage_dir = ctx.run_dir / "stages"
    programs = [(name, stage_dir / f"{name}.pt2") for name in ("capture", "fx_optimize")]
    programs = [(name, path) for name, path in programs if path.is_file()]
    errors: dict[str, float | None] = {}  # max abs error of each stage's artifact on this input
    matches: dict[str, bool] = {}
    for name, path in programs:
        ep = load_exported_program(path, ctx.facts.get("io"))
        with torch.no_grad():
            outputs = tree_flatten(ep.module()(*args, **kwargs))[0]
        errors[name] = _max_abs(reference, outputs)
        matches[name] = _outputs_match(reference, outputs, atol, rtol)
    last_ep = programs[-1][1] if programs else None
    convert_path = stage_dir / "convert.onnx"
    if not convert_path.is_file():
        return {"stage": None, "summary": "no stage artifacts to localize the mismatch"}
    convert_model = load_model(convert_path)
    convert_outputs = run_plain(convert_model, feed, providers, level)
    errors["convert"] = _max_abs(reference, convert_outputs)
    matches["convert"] = _outputs_match(reference, convert_outputs, atol, rtol)
    final = None
    if onnx_path.resolve() != convert_path.resolve():
        final = load_model(onnx_path)
        final_outputs = run_plain(final, feed, providers, level)
        errors["simplify"] = _max_abs(reference, final_outputs)
        matches["simplify"] = _outputs_match(reference, final_outputs, atol, rtol)
    order = list(errors)
    stage = _blamed_stage(order, errors, matches)
    if stage is None:
        return {
            "stage": None,
            "stage_errors": errors,
            "summary": "every stage matches on a second run (non-deterministic?)",
        }
    if stage in ("capture", "fx_optimize"):
        why = (
            "the graph captured by torch.export already differs from eager PyTorch: Python-side state, "
            "randomness or data-dependent behaviour was fixed at trace time"
            if stage == "capture"
            else "the FX optimizations changed the numbers"
        )
        hint = (
            "make forward a pure function of its inputs"
            if stage == "capture"
            else "set optimization.fx.enabled=false (or disable the pass) and report the model"
        )
        return {"stage": stage, "summary": why, "hint": hint, "stage_errors": errors}
    convert_values = run_with_intermediates(convert_model, feed, providers, level=level)
    if stage == "convert":
        if last_ep is None:
            return {
                "stage": "convert",
                "stage_errors": errors,
                "summary": "the ONNX graph differs; no FX graph to compare with",
            }
        ep = load_exported_program(last_ep, ctx.facts.get("io"))
        try:
            ep = _decomposed_program(ep)
        except Exception as exc:  # private exporter API: fall back to the undecomposed graph
            log.warning("diagnosis: could not decompose the program like the exporter: %s", exc)
        fx_values, fx_nodes = fx_intermediates(ep, args, kwargs)
        for onnx_name, fx_name in zip(output_names, ep.graph_signature.user_outputs, strict=False):
            if fx_name in fx_values:
                fx_values[onnx_name], fx_nodes[onnx_name] = fx_values[fx_name], fx_nodes[fx_name]
        found = first_divergence(convert_model, convert_values, fx_values, atol, rtol, fx_nodes)
        return {
            "stage": "convert",
            "stage_errors": errors,
            "summary": "the ONNX translation differs from the FX graph",
            "hint": "an op is translated wrongly; a custom translation for the op named here can fix it",
            "first_diverging_node": found,
        }
    final_values = run_with_intermediates(final, feed, providers, wanted=set(convert_values), level=level)
    found = first_divergence(final, final_values, convert_values, atol, rtol)
    return {
        "stage": "simplify",
        "stage_errors": errors,
        "summary": "the convert graph matches eager PyTorch; the simplification changed the numbers",
        "hint": "set optimization.simplify.onnxsim=false or optimization.simplify.onnxscript_optimizer=false",
        "first_diverging_node": found,
    }


def describe(diagnosis: dict[str, Any]) -> str:
    """One clause for the error line."""
    stage = diagnosis.get("stage")
    node = diagnosis.get("first_diverging_node")
    if node:
        fx = f", FX node '{node['fx_node']}' ({node['fx_target']})" if node.get("fx_node") else ""
        module = f" in module '{node['module']}'" if node.get("module") else ""
        err = (
            f": max abs error {node['max_abs']:.3g}"
            if node.get("max_abs") is not None
            else f": {node['reason']}"
        )
        return (
            f"first diverging node: '{node['onnx_node']}' ({node['op_type']}){fx}{module}{err} "
            f"[{stage} stage]{_errors_text(diagnosis)}"
        )
    if stage:
        return f"mismatch introduced at the {stage} stage: {diagnosis['summary']}{_errors_text(diagnosis)}"
    return diagnosis.get("summary", "")


def _errors_text(diagnosis: dict[str, Any]) -> str:
    errors = {k: v for k, v in (diagnosis.get("stage_errors") or {}).items() if v is not None}
    if not errors:
        return ""
    return " (max abs error by stage: " + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()) + ")"

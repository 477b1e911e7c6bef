"""validate: onnxruntime vs eager PyTorch on several input sets; a mismatch fails the build.

Input sets are shapes (min, max, example, odd) x value profiles (normal everywhere, edge cases at
the smallest shape) plus user samples. Per output: error statistics and a verdict with tolerances
by precision or per output name. The comparison is not fooled: outputs fed by random ops are
reported as non-deterministic instead of failing numerically, and outputs that are (near-)zero or
do not change with the input are flagged as a weak comparison. A mismatch is localized to the
first diverging node (onnxbuild.diagnose).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from onnxbuild.artifacts import write_json_atomic
from onnxbuild.compare import compare_output, lowest_precision, resolve_tolerance, weak_reason
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import ConfigError, StageError, ValidationFailed
from onnxbuild.input_sets import branch_coverage_warning, extra_validation_sets
from onnxbuild.inputs import EDGE_PROFILES, InputSet, split_call, to_numpy_feed, validation_input_sets
from onnxbuild.ort_sessions import DEFAULT_LEVEL, safe_level, session_options
from onnxbuild.release import check_release_tolerance
from onnxbuild.stages.capture import first_line
from onnxbuild.validation_checks import check_output_overrides, check_validation_section

NAME = "validate"
VERSION = 2
log = logging.getLogger("onnxbuild")


def ort_providers(device_name: str, index: int) -> list[Any]:
    if device_name == "cuda":
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# Errors up to this fraction of an output's scale (max |reference|) are the size of float32 rounding
# accumulated through a deep graph (different kernels, summation orders, fusions), not a wrong op.
ROUNDING_LEVEL = 1e-4


def rounding_clause(stats: dict[str, Any]) -> str:
    """Say so when a float mismatch is small next to the output's magnitude."""
    scale = stats.get("reference_max_abs")
    error = stats.get("max_abs")
    if not scale or error is None or not str(stats.get("dtype", "")).startswith(("float", "bfloat")):
        return ""
    fraction = error / scale
    if fraction > ROUNDING_LEVEL:
        return ""
    return (
        f"; the error is {fraction:.2g} of the output's scale (max |ref| {scale:.3g}): accumulated "
        "float rounding rather than a wrong op, unless the model is meant to be exact to that level"
    )


def weak_hint(reason: str, ctx: BuildContext) -> str:
    """What to do about a weak comparison, depending on why it is weak and the init in use."""
    if reason.startswith("is NaN/Inf"):
        return (
            "fix the model or the input ranges (input.inputs[*].low/high, masks) so eager PyTorch is finite"
        )
    mode = (ctx.facts.get("model_init") or {}).get("mode")
    if mode == "informative":
        return "give model.checkpoint (trained weights), or feed inputs that exercise it (validation.samples)"
    return "give model.checkpoint, or use model.init=informative"


def make_session(path: Path, device_name: str, index: int, level: str = DEFAULT_LEVEL) -> Any:
    import onnx
    import onnxruntime as ort

    from onnxbuild.onnx_utils import file_tensor_types

    try:
        return ort.InferenceSession(
            str(path), session_options(level), providers=ort_providers(device_name, index)
        )
    except Exception as exc:
        text = str(exc)
        if "NOT_IMPLEMENTED" in text and (
            "bfloat16" in text or onnx.TensorProto.BFLOAT16 in file_tensor_types(path)
        ):
            raise StageError(
                f"onnxruntime has no bfloat16 kernel for an op of this graph on {device_name}: {first_line(exc)}",
                stage=NAME,
                key="input.inputs",
                hint="build in float16 or float32 (model and input dtypes), or validate with device=cuda",
            ) from exc
        raise StageError(
            f"onnxruntime cannot load the model: {first_line(exc)}",
            stage=NAME,
            key="opset",
            hint="the graph uses an op or opset this onnxruntime does not support; try another opset",
        ) from exc


def flatten_outputs(outputs: Any) -> list[Any]:
    from torch.utils._pytree import tree_flatten

    return tree_flatten(outputs)[0]


def build_precision(model: Any, specs: list[Any]) -> str | None:
    """The lowest float precision among the model's weights (each output's own dtype counts too,
    in resolve_tolerance). Not the inputs': both sides get the same float16 values, so a float16
    input to a float32 model needs float32 tolerances (float16's are 100x looser)."""
    dtypes = {str(t.dtype).removeprefix("torch.") for t in [*model.parameters(), *model.buffers()]}
    return lowest_precision(sorted(dtypes))


def _reference(model: Any, ctx: BuildContext, values: dict[str, Any]) -> list[tuple[Any, str]]:
    """Eager outputs as (numpy array, torch dtype name)."""
    import torch

    device_values = {
        k: v.to(ctx.torch_device) if isinstance(v, torch.Tensor) else v for k, v in values.items()
    }
    args, kwargs = split_call(ctx.specs, device_values)
    with torch.no_grad():
        outputs = flatten_outputs(model(*args, **kwargs))
    result = []
    for t in outputs:
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        dtype = str(t.dtype).removeprefix("torch.")
        t = t.detach().cpu()
        result.append(((t.float() if t.dtype == torch.bfloat16 else t).numpy(), dtype))
    return result


def _random_op_findings(model: Any) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    from onnxbuild.nondeterminism import outputs_fed_by, random_nodes

    nodes = random_nodes(model)
    fed = outputs_fed_by(model, {n for n, _ in nodes}) if nodes else {}
    return nodes, {out: srcs for out, srcs in fed.items() if srcs}


def _shape_key(feed: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in feed.items()))


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:
    import numpy as np

    from onnxbuild.onnx_utils import load_model

    check_validation_section(section)
    policy = str(section.random_ops)
    io = upstream.info.get("io") or {}
    names = list(io.get("outputs", []))
    graph = upstream.payload if upstream.payload is not None else load_model(upstream.path)
    random_nodes, random_outputs = _random_op_findings(graph)
    level, crash_note = safe_level(upstream.path, str(ctx.cfg.device.name), NAME, model=graph)
    if crash_note:
        ctx.warn(crash_note)
    session = make_session(upstream.path, ctx.cfg.device.name, int(ctx.cfg.device.index), level)
    onnx_names = [o.name for o in session.get_outputs()]
    names = [names[i] if i < len(names) else onnx_names[i] for i in range(len(onnx_names))]
    check_output_overrides(section, names)
    model = ctx.model()
    precision = build_precision(model, ctx.specs)
    sets = validation_input_sets(
        ctx.specs,
        seed=int(ctx.cfg.seed) + 1,
        profiles=list(section.profiles),
        include_example=bool(section.include_example_shape),
        include_odd=bool(section.include_odd_shape),
        edge_at_every_shape=bool(section.edge_profiles_at_every_shape),
        samples=section.samples,
    )
    large = float(section.large_magnitude)
    # Named sets (both sides of a torch.cond...) and tokenized sentences: fixed values, run as-is.
    sets = [*sets, *extra_validation_sets(ctx.cfg, ctx.specs, seed=int(ctx.cfg.seed) + 1 + len(sets))]
    branch_warning = branch_coverage_warning(upstream.path, ctx.cfg.input)
    if branch_warning:
        ctx.warn(branch_warning)

    nondeterministic = {
        onnx_names[i]: random_outputs[o] for i, o in enumerate(onnx_names) if o in random_outputs
    }
    nondet_names = {names[i] for i, o in enumerate(onnx_names) if o in random_outputs}
    finding = None
    if random_nodes:
        ops = sorted({op for _, ops in random_nodes for op in ops.split(",")})
        where = ", ".join(f"'{n}' ({o})" for n, o in random_nodes[:5])
        fed = ", ".join(f"'{n}'" for n in sorted(nondet_names)) or "no output"
        finding = f"non-deterministic graph: {', '.join(ops)} at node(s) {where} feed(s) {fed}"

    releasing = ctx.cfg.get("release") is not None and bool(ctx.cfg.release.enabled)
    results: list[dict[str, Any]] = []
    tolerances: dict[str, dict[str, Any]] = {}
    groups: dict[tuple, list[list[np.ndarray]]] = {}
    all_refs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    failing_values: dict[str, Any] | None = None
    edge_warnings: list[str] = []
    failing_reference: list[np.ndarray] | None = None
    for input_set in sets:
        values = input_set.values(ctx.specs, large)
        feed = to_numpy_feed(ctx.specs, values)
        try:
            reference = _reference(model, ctx, values)
        except Exception as exc:
            # The export example ran, so it is this set's values (e.g. token ids at `high - 1`
            # beyond the embedding table) or sizes that eager PyTorch rejects.
            shapes = {k: list(v.shape) for k, v in feed.items()}
            tokenized = input_set.label.startswith("sentences") and ctx.cfg.model.get("tokenizer")
            if tokenized:
                # The tokenizer's ids, not input.inputs' ranges: e.g. a 30k vocabulary on a 1k-token model.
                top = max(
                    (int(v.max()) for v in feed.values() if v.dtype.kind in "iu" and v.size), default=None
                )
                key, hint = (
                    "model.tokenizer",
                    (
                        f"the tokenizer gives ids up to {top} that the model rejects: use the tokenizer the model was "
                        "trained with (a vocabulary no larger than the model's), or drop input.sentences"
                    ),
                )
            else:
                key, hint = (
                    "input.inputs",
                    (
                        "fit the inputs' low/high (integer ranges are [low, high)) and dynamic min/max to what the "
                        "model accepts, or drop the profile from validation.profiles"
                    ),
                )
            raise ConfigError(
                f"eager PyTorch rejects validation input set '{input_set.label}' {shapes}: "
                f"{type(exc).__name__}: {first_line(exc)}",
                key=key,
                hint=hint,
            ) from exc
        try:
            actual = session.run(None, feed)
        except Exception as exc:
            raise StageError(
                f"onnxruntime failed on input set '{input_set.label}' {input_set.sizes}: {first_line(exc)}",
                stage=NAME,
                key="input.inputs",
                hint="the graph does not accept this size; narrow the dynamic range or check the model",
            ) from exc
        if len(actual) != len(reference):
            raise StageError(
                f"onnxruntime returned {len(actual)} outputs, eager PyTorch {len(reference)}", stage=NAME
            )
        outputs = {}
        for name, (ref, ref_dtype), act in zip(names, reference, actual, strict=False):
            atol, rtol, source = resolve_tolerance(name, ref_dtype, precision, section)
            if releasing and name not in tolerances:  # once per output, not per input set
                check_release_tolerance(name, ref_dtype, precision, atol, rtol, source)
            tolerances[name] = {"atol": atol, "rtol": rtol, "source": source}
            stats = compare_output(np.asarray(ref), np.asarray(act), atol, rtol, reference_dtype=ref_dtype)
            if name in nondet_names:
                stats["nondeterministic"] = True
                stats["passed"] = None
                stats.pop("reason", None)
            elif (
                input_set.profile in EDGE_PROFILES
                and stats["passed"] is False
                and str(stats.get("reason", "")).startswith("max abs error")
                and not section.strict_edge_profiles
            ):
                stats["passed"] = True
                stats["edge_warning"] = stats.pop("reason")
                scale = stats.get("reference_max_abs") or 0.0
                edge_warnings.append(
                    f"edge profile '{input_set.label}', output '{name}': {stats['edge_warning']} "
                    f"(reference max |value| {scale:.3g}); not a failure unless validation.strict_edge_profiles=true"
                )
            outputs[name] = stats
            all_refs[name].append(np.asarray(ref))
        key = _shape_key(feed)
        groups.setdefault(key, []).append([np.asarray(r) for r, _ in reference])
        passed = all(o["passed"] is not False for o in outputs.values())
        if not passed and failing_values is None:
            failing_values, failing_reference = values, [np.asarray(r) for r, _ in reference]
        results.append(
            {
                "label": input_set.label,
                "profile": input_set.profile,
                "sample": input_set.sample,
                "sizes": input_set.sizes,
                "input_shapes": {k: list(v.shape) for k, v in feed.items()},
                "outputs": outputs,
                "passed": passed,
            }
        )

    same_shape = [g for g in groups.values() if len(g) >= 2]
    if not same_shape and sets:
        # One run per shape: add a reference-only run at the first shape to see if outputs move.
        extra = InputSet("input-sensitivity", "normal", sets[0].sizes, seed=int(ctx.cfg.seed) + 7919)
        if sets[0].arrays is None:
            first = next(iter(groups.values()))
            same_shape = [
                [*first, [np.asarray(r) for r, _ in _reference(model, ctx, extra.values(ctx.specs))]]
            ]
    weak: dict[str, str] = {}
    for index, name in enumerate(names):
        if name in nondet_names:
            continue
        tol = tolerances.get(name, {"atol": 0.0, "rtol": 0.0})
        per_output_groups = [[run[index] for run in g] for g in same_shape]
        reason = weak_reason(all_refs[name], per_output_groups, tol["atol"], tol["rtol"])
        if reason:
            weak[name] = reason
    for name, reason in weak.items():
        ctx.warn(
            f"output '{name}' {reason}: the comparison is weak and cannot catch a wrong graph "
            f"(hint: {weak_hint(reason, ctx)}; validation.require_informative=true fails)"
        )
    for message in edge_warnings:
        ctx.warn(message)
    if finding and policy == "warn":
        ctx.warn(
            f"{finding}: those outputs are not compared numerically (validation.random_ops=fail to fail)"
        )

    passed = all(r["passed"] for r in results)
    report: dict[str, Any] = {
        "passed": passed,
        # Outputs compared numerically (those fed by random ops are not): "passed" covers only these.
        "outputs_compared": [n for n in names if n not in nondet_names],
        "outputs_not_compared": [n for n in names if n in nondet_names],
        "precision": precision,
        "atol": section.atol,
        "rtol": section.rtol,
        "tolerances": tolerances,
        "providers": session.get_providers(),
        # Lower than ORT_ENABLE_ALL only where onnxruntime crashed building the session (ort_sessions.py).
        "graph_optimization_level": level,
        "input_sets": results,
        "degenerate_outputs": sorted(weak),
        "weak": bool(weak),
        "weak_outputs": weak,
        "edge_warnings": edge_warnings,
        "nondeterministic": {"finding": finding, "random_nodes": random_nodes, "outputs": nondeterministic}
        if random_nodes
        else None,
        # Headline errors cover the compared (not non-deterministic, not edge-warned) outputs.
        "max_abs_error": max((o.get("max_abs", 0.0) for o in _verdict_stats(results)), default=0.0),
        "max_rel_error": max((o.get("max_rel", 0.0) for o in _verdict_stats(results)), default=0.0),
        "edge_max_abs_error": max(
            (
                o.get("max_abs", 0.0)
                for r in results
                if r["profile"] in EDGE_PROFILES
                for o in r["outputs"].values()
            ),
            default=None,
        ),
        "diagnosis": None,
    }
    failure: ValidationFailed | None = None
    if not passed:
        failed = [
            (r["label"], n, o) for r in results for n, o in r["outputs"].items() if o["passed"] is False
        ]
        label, name, stats = failed[0]
        clause = ""
        if section.diagnose and failing_values is not None:
            report["diagnosis"] = _diagnose(
                ctx, upstream.path, failing_values, failing_reference, onnx_names, stats, level
            )
            if report["diagnosis"].get("error") is None:
                from onnxbuild.diagnose import describe

                clause = f"; {describe(report['diagnosis'])}"
        from onnxbuild.noise import float32_noise, noise_clause
        from onnxbuild.stages.capture import STATEFUL_HINT, buffer_list

        stateful = ctx.facts.get("mutated_buffers") or []
        # A stateful model drifts from call to call (a float64 copy drifts too): no noise floor then.
        noise = (
            float32_noise(ctx, failing_values, failing_reference)
            if failing_values is not None and not stateful
            else None
        )
        report["float32_noise"] = noise
        measured = noise_clause(float(stats.get("max_abs") or 0.0), noise)
        rounding = "" if stateful else measured or rounding_clause(stats)
        clause += rounding
        if stateful:
            clause += (
                f"; model.forward updates buffer(s) {buffer_list(stateful)} on every call, so eager PyTorch changes from call "
                "to call while the ONNX graph keeps no state"
            )
        diagnosis = report.get("diagnosis") or {}
        tolerance_hint = f"details in validation.json; atol >= {stats.get('min_atol_to_pass', float('nan')):.3g} would pass"
        # A localized, real mismatch is fixed in the model or the export, not by a looser tolerance.
        if stateful:
            hint = f"{STATEFUL_HINT}; details in validation.json"
        elif diagnosis.get("hint") and diagnosis.get("stage") and not rounding:
            hint = f"{diagnosis['hint']}; details in validation.json"
        else:
            hint = tolerance_hint
        failure = ValidationFailed(
            f"output '{name}' differs from eager PyTorch on input set '{label}': {stats.get('reason')} "
            f"(max rel {stats.get('max_rel', float('nan')):.3g}; {len(failed)} failing output/set pair(s)){clause}",
            stage=NAME,
            key="model._target_"
            if stateful
            else f"validation.outputs.{name}"
            if tolerances.get(name, {}).get("source", "").startswith("validation.outputs")
            else "validation.atol",
            hint=hint,
        )
    elif finding and policy == "fail":
        failure = ValidationFailed(
            finding,
            stage=NAME,
            key="validation.random_ops",
            hint="sampling ops cannot be validated against eager PyTorch; remove them from forward "
            "or set validation.random_ops=warn",
        )
    elif weak and section.require_informative:
        name = sorted(weak)[0]
        failure = ValidationFailed(
            f"output '{name}' {weak[name]}: the comparison is weak ({len(weak)} weak output(s))",
            stage=NAME,
            key="validation.require_informative",
            hint="give model.checkpoint or use model.init=informative, or set validation.require_informative=false",
        )
    report["table"] = summary_table(report)
    report["error"] = failure.one_line() if failure else None
    write_json_atomic(ctx.run_dir / "validation.json", report)
    ctx.facts["validation"] = report
    if failure is not None:
        for line in report["table"]:  # on success the CLI summary shows the table
            log.info("%s", line)
        raise failure
    return Artifact(
        path=upstream.path, digest=upstream.digest, payload=upstream.payload, info={"report": report}
    )


def _verdict_stats(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for r in results
        for o in r["outputs"].values()
        if o["passed"] is not None and not o.get("edge_warning")
    ]


def _diagnose(
    ctx: BuildContext,
    onnx_path: Path,
    values: dict[str, Any],
    reference: list[Any],
    onnx_names: list[str],
    stats: dict[str, Any],
    level: str,
) -> dict[str, Any]:
    """Localize the mismatch; a diagnosis that itself fails is reported, never raised."""
    import torch

    from onnxbuild.diagnose import localize

    device_values = {
        k: v.to(ctx.torch_device) if isinstance(v, torch.Tensor) else v for k, v in values.items()
    }
    args, kwargs = split_call(ctx.specs, device_values)
    try:
        return localize(
            ctx,
            onnx_path,
            args,
            kwargs,
            to_numpy_feed(ctx.specs, values),
            reference,
            onnx_names,
            float(stats["atol"]),
            float(stats["rtol"]),
            ort_providers(ctx.cfg.device.name, int(ctx.cfg.device.index)),
            level,
        )
    except Exception as exc:  # diagnosis is best effort; the verdict stands
        log.warning("diagnosis failed: %s", first_line(exc))
        return {
            "stage": None,
            "summary": "diagnosis failed",
            "error": f"{type(exc).__name__}: {first_line(exc)}",
        }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}"
    return str(value)


def _set_label(item: dict[str, Any]) -> str:
    sizes = ",".join(f"{k}={v}" for k, v in item["sizes"].items())
    return f"{item['label']} {sizes}".strip()


def summary_table(report: dict[str, Any]) -> list[str]:
    """Human table: one row per input set x output, with the verdict and the tolerance that would pass.

    Columns are as wide as the longest set label and output name: nothing is cut.
    """
    rows = [(item, name, o) for item in report["input_sets"] for name, o in item["outputs"].items()]
    set_width = max([len("input set"), *(len(_set_label(item)) for item, _, _ in rows)])
    name_width = max([len("output"), *(len(name) for _, name, _ in rows)])
    header = (
        f"{'input set':<{set_width}} {'output':<{name_width}} {'max_abs':>9} {'max_rel':>9} {'p99_abs':>9} "
        f"{'atol':>8} {'rtol':>8} {'min_atol':>9}  verdict"
    )
    lines = [header]
    weak = report.get("weak_outputs") or {}
    for item, name, o in rows:
        if o["passed"] is None:
            verdict = "non-deterministic"
        else:
            verdict = "ok" if o["passed"] else f"FAIL ({o.get('reason')})"
            if o.get("edge_warning"):
                verdict = "warn (edge profile)"
            if o["passed"] and name in weak:
                verdict = "ok (weak)"
        lines.append(
            f"{_set_label(item):<{set_width}} {name:<{name_width}} {_fmt(o.get('max_abs')):>9} "
            f"{_fmt(o.get('max_rel')):>9} {_fmt(o.get('p99_abs')):>9} {o['atol']:>8.0e} {o['rtol']:>8.0e} "
            f"{_fmt(o.get('min_atol_to_pass')):>9}  {verdict}"
        )
    return lines

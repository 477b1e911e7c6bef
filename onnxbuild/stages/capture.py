"""capture: torch.export the eager model with dynamic shapes derived from the input spec."""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import DictConfig

from onnxbuild.artifacts import file_sha256
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import ANSI, ConfigError, StageError
from onnxbuild.export_utils import (
    output_dataclass_types,
    output_type_names,
    register_dataclass_type,
    save_exported_program,
)
from onnxbuild.inputs import export_dynamic_shapes, export_sizes, make_inputs, split_call, widened_dims
from onnxbuild.logutil import FILE_ONLY
from onnxbuild.torch_output import torch_output_to_log

NAME = "capture"
VERSION = 1
STRATEGIES = {"auto": ["non_strict", "strict"], "non_strict": ["non_strict"], "strict": ["strict"]}
log = logging.getLogger("onnxbuild")


def output_names(outputs: Any, configured: list[str]) -> tuple[list[str], list[str]]:
    """Stable names for the flattened outputs (dict keys, attribute names, indices) and leaf kinds."""
    from torch.utils._pytree import GetAttrKey, MappingKey, SequenceKey, tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(outputs)
    names: list[str] = []
    for path, _leaf in leaves:
        parts = []
        for entry in path:
            if isinstance(entry, MappingKey):
                parts.append(str(entry.key))
            elif isinstance(entry, GetAttrKey):
                parts.append(entry.name)
            elif isinstance(entry, SequenceKey):
                parts.append(str(entry.idx))
            else:
                parts.append(str(entry))
        names.append(".".join(parts))
    if len(names) == 1 and names[0] in ("", "0"):
        names = ["output"]
    elif names and all(n.isdigit() for n in names):
        names = [f"output_{n}" for n in names]
    if configured:
        if len(configured) != len(names):
            raise ConfigError(
                f"{len(configured)} output names given but the model returns {len(names)} outputs ({names})",
                key="input.output_names",
                hint="give one name per flattened output, or leave output_names empty",
            )
        names = list(configured)
    kinds = [type(leaf).__name__ for _, leaf in leaves]
    return names, kinds


# Exception class names and message fragments torch.export uses for a Python branch on tensor
# values: non-strict raises GuardOnDataDependentSymNode ("Could not guard on data-dependent
# expression ..."), strict raises a dynamo UserError/Unsupported ("Data-dependent branching",
# "Dynamic control flow is not supported"). Matched on names and lower-cased text so that a wrapped
# or reworded error is still recognised.
DATA_DEPENDENT_TYPES = ("GuardOnDataDependentSymNode", "DataDependentOutputException")
DATA_DEPENDENT_TEXT = (
    "data-dependent",
    "data dependent",
    "guardondatadependentsymnode",
    "dynamic control flow",
    "generic_jump",
)
CONSTRAINT_TEXT = ("constraints violated", "specialized", "not in range", "guard on a dynamic dim")
COND_HINT = (
    "the model branches on tensor values in Python (an `if` on a tensor, or .item()), which torch.export "
    "cannot capture without baking in one branch; rewrite the branch with torch.cond(pred, true_fn, "
    "false_fn, operands) so both sides are exported (ONNX If)"
)


def _causes(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_data_dependent(exc: BaseException) -> bool:
    for cause in _causes(exc):
        names = {cls.__name__ for cls in type(cause).__mro__}
        if names & set(DATA_DEPENDENT_TYPES):
            return True
        text = str(cause).lower()
        if any(fragment in text for fragment in DATA_DEPENDENT_TEXT):
            return True
    return False


def register_output_dataclasses(value: Any) -> None:
    """Make plain @dataclass outputs pytree nodes, so torch.export flattens them to named tensors.

    (HF ModelOutput and namedtuples are pytrees already; an unregistered dataclass would be one
    opaque leaf that no ONNX graph can return.)
    """
    for cls in output_dataclass_types(value):
        register_dataclass_type(cls)


def check_output_names(names: list[str], input_names: list[str]) -> None:
    """ONNX names must be unique across inputs and outputs (SSA): say so before the exporter does."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    clashes = sorted(set(names) & set(input_names))
    if duplicates or clashes:
        what = (
            f"duplicate output names {duplicates}" if duplicates else f"outputs named like inputs {clashes}"
        )
        raise ConfigError(
            f"{what} (outputs: {names}; inputs: {input_names})",
            key="input.output_names",
            hint="give unique names with input.output_names=[...], one per flattened output",
        )


def constraint_details(exc: BaseException) -> dict[str, str]:
    """The actionable lines of torch.export's constraint report, which the first line leaves out.

    `equal`: two dims the model combines ("... must always be equal"), `constant`: a dim the model
    fixes ("specialized it to be a constant (12)"), `fixes`: torch's "Suggested fixes" lines.
    """
    found: dict[str, str] = {}
    for cause in _causes(exc):
        lines = [ln.strip() for ln in ANSI.sub("", str(cause)).splitlines()]
        for index, line in enumerate(lines):
            lowered = line.lower()
            if "must always be equal" in lowered and "equal" not in found:
                found["equal"] = line.lstrip("- ")
            if "specialized it to be a constant" in lowered and "constant" not in found:
                found["constant"] = line.lstrip("- ").split(". ")[0].rstrip(".")  # not torch's API advice
            if lowered.startswith("suggested fixes") and "fixes" not in found:
                fixes = [
                    ln for ln in lines[index + 1 : index + 6] if ln and not ln.lower().startswith("for more")
                ]
                found["fixes"] = "; ".join(ln.strip("` ") for ln in fixes if "=" in ln)
    return {k: v[:240] for k, v in found.items() if v}


def failure_text(exc: BaseException) -> str:
    """One line for a strategy's failure: the first line, plus torch's own diagnosis when it has one."""
    details = constraint_details(exc)
    extra = [details[k] for k in ("equal", "constant") if k in details]
    if "fixes" in details:
        extra.append(f"suggested fixes: {details['fixes']}")
    return first_line(exc) + (f" ({'; '.join(extra)})" if extra else "")


def _join_failures(errors: list[str]) -> str:
    """`non_strict: X; strict: Y`, or `non_strict and strict: X` when both strategies failed alike."""
    parts = [e.split(": ", 1) for e in errors]
    if len(parts) > 1 and all(len(p) == 2 for p in parts) and len({p[1] for p in parts}) == 1:
        return f"{' and '.join(p[0] for p in parts)}: {parts[0][1]}"
    return "; ".join(errors)


def _runtime_modules(target: str, before: set[str]) -> dict[str, str]:
    """Local modules loaded while the model was built, or in the factory's own top-level package,
    that the import-reading fingerprint does not already cover."""
    from onnxbuild.fingerprint import loaded_local_modules, target_identity

    top = target.split(".")[0]
    names = {n for n in sys.modules if n not in before or n == top or n.startswith(top + ".")}
    static = set(target_identity(target).get("local_modules") or {})
    return loaded_local_modules(names, exclude=static)


STATEFUL_HINT = "update the state only when self.training, or pass it in as an input and return the new state as an output"


def mutated_buffers(exported: Any) -> list[str]:
    """Buffers the forward updates in place (running statistics, EMAs, caches, counters).

    torch.export's training IR keeps in-place ops (buffers_to_mutate fills only once the graph is
    functionalized, a whole re-trace): follow each buffer through the ops that alias it (views,
    in-place ops returning self) and report those an op writes to.
    """
    import torch

    buffer_of = dict(exported.graph_signature.inputs_to_buffers)
    mutated = set(exported.graph_signature.buffers_to_mutate.values())
    aliases: dict[Any, str] = {}  # node -> the buffer it is a view of
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in buffer_of:
            aliases[node] = buffer_of[node.name]
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        schema = node.target._schema
        for index, argument in enumerate(schema.arguments):
            value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
            buffer = aliases.get(value) if isinstance(value, torch.fx.Node) else None
            if buffer is None or argument.alias_info is None:
                continue
            if argument.alias_info.is_write:
                mutated.add(buffer)
            if any(r.alias_info is not None for r in schema.returns):
                aliases[node] = buffer
    return sorted(mutated)


def buffer_list(buffers: list[str]) -> str:
    """`'a', 'b' ...`: the first five buffer names, for one-line messages."""
    return ", ".join(f"'{b}'" for b in buffers[:5]) + (" ..." if len(buffers) > 5 else "")


def stateful_warning(buffers: list[str]) -> str:
    return (
        f"model.forward updates buffer(s) {buffer_list(buffers)} on every call: the ONNX graph keeps no state, so outputs "
        f"that depend on it differ from eager PyTorch after the first call (hint: {STATEFUL_HINT})"
    )


def _hint_for(excs: list[BaseException]) -> str:
    """The most useful hint across every strategy's failure (data-dependent control flow first)."""
    if any(is_data_dependent(exc) for exc in excs):
        return COND_HINT
    details: dict[str, str] = {}
    for exc in excs:
        details = {**constraint_details(exc), **details}
    if "equal" in details:
        return (
            "the model combines two dims declared under different names: give both the same dim name "
            "in the input spec (they share one range)"
        )
    if "constant" in details:
        return (
            "the model fixes this size (e.g. an RNN unrolled over time, or a literal size in a view): "
            "declare the dim static at that size"
        )
    if "fixes" in details:
        return (
            f"the model needs sizes of a special form (torch suggests: {details['fixes']}): keep min, max and "
            "the example of that form, or declare the dim static"
        )
    if any(f in str(c).lower() for exc in excs for c in _causes(exc) for f in CONSTRAINT_TEXT):
        return (
            "the model fixes a dim declared dynamic; make it static in the input spec or narrow its min/max"
        )
    return "run with HYDRA_FULL_ERROR=1 for the exporter's trace; try capture.strategy=strict or non_strict"


def first_line(exc: BaseException, limit: int = 300) -> str:
    for line in ANSI.sub("", str(exc)).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact | None = None) -> Artifact:
    import inspect

    import torch

    before = set(sys.modules)
    model = ctx.model()
    runtime_modules = _runtime_modules(str(ctx.cfg.model._target_), before)
    sizes = export_sizes(ctx.specs)
    values = make_inputs(ctx.specs, sizes, seed=int(ctx.cfg.seed))
    values = {k: v.to(ctx.torch_device) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
    args, kwargs = split_call(ctx.specs, values)
    shapes_text = {k: list(v.shape) for k, v in values.items() if isinstance(v, torch.Tensor)}
    try:
        with torch.no_grad():
            outputs = model(*args, **kwargs)
    except Exception as exc:
        raise ConfigError(
            f"the model rejects the example inputs {shapes_text}: {first_line(exc)}",
            key="input.inputs",
            hint="make input shapes/dtypes match what the model's forward expects",
        ) from exc
    register_output_dataclasses(outputs)
    names, kinds = output_names(outputs, list(ctx.cfg.input.output_names or []))
    check_output_names(names, [s.name for s in ctx.specs if not s.constant])
    dynamic_shapes = export_dynamic_shapes(model, ctx.specs, args, kwargs)

    errors: list[str] = []
    exported = None
    last_exc: BaseException | None = None
    failures: list[BaseException] = []
    strategy_used = None
    strategies = STRATEGIES[str(section.strategy)]
    plans = [(strategy, dynamic_shapes, "") for strategy in strategies]
    widened = widened_dims(ctx.specs)
    if widened:
        # The widened trace range (export_max) is refused by a model that checks its sizes against
        # the spec's max: then trace the exact range (convert still checks the dims stay dynamic).
        exact = export_dynamic_shapes(model, ctx.specs, args, kwargs, widen=False)
        plans += [(strategy, exact, " (exact range)") for strategy in strategies]
    trace_range = "widened" if widened else "exact"
    for strategy, shapes, label in plans:
        try:
            with torch_output_to_log(f"capture ({strategy}{label})"):
                exported = torch.export.export(
                    model, args, kwargs, dynamic_shapes=shapes, strict=strategy == "strict"
                )
            strategy_used = strategy
            trace_range = "exact" if label else trace_range
            break
        except Exception as exc:  # the exporter raises many unrelated types
            # The error line names every strategy's failure: the terminal gets it once, from there.
            log.warning(
                "capture with strategy %s failed: %s", strategy + label, first_line(exc), extra=FILE_ONLY
            )
            errors.append(f"{strategy}{label}: {failure_text(exc)}")
            last_exc = exc
            failures.append(exc)
    if exported is not None and errors:
        log.warning("capture: %s; captured with strategy %s", "; ".join(errors), strategy_used)
    if exported is None:
        prefix = (
            "data-dependent control flow (a Python branch on tensor values) cannot be captured: "
            if any(is_data_dependent(exc) for exc in failures)
            else ""
        )
        raise StageError(
            prefix + _join_failures(errors), stage=NAME, key="capture.strategy", hint=_hint_for(failures)
        ) from last_exc

    mutated = mutated_buffers(exported)
    if mutated:
        ctx.warn(stateful_warning(mutated))

    # Map the forward's parameter names (placeholder names) to the spec's input names.
    positional = [s.name for s in ctx.specs if not (s.keyword or s.constant)]
    params = list(inspect.signature(model.forward).parameters)
    placeholder_to_input = {params[i]: name for i, name in enumerate(positional) if i < len(params)}
    path = ctx.stage_dir / "capture.pt2"
    save_exported_program(exported, path)
    constants = {s.name: s.value for s in ctx.specs if s.constant}
    return Artifact(
        path=path,
        digest=file_sha256(path),
        # Not handed on live: the live program still holds the capture-time ShapeEnv and view
        # strides, and gives other bytes downstream than the saved one (stages/fx_optimize.py).
        payload=None,
        info={
            "strategy": strategy_used,
            "fallback_errors": errors,
            "example_sizes": sizes,
            "fx_nodes": sum(1 for n in exported.graph.nodes if n.op == "call_function"),
            "mutated_buffers": mutated,
            # "widened": dims with a two-value range were traced over three (inputs.export_max).
            "trace_range": trace_range,
            # Local modules the factory loaded at run time (not found by reading its imports): a
            # cached capture is reused only while they are unchanged (pipeline._stale_capture).
            "runtime_modules": runtime_modules,
            "constants": constants,
            # What the weight init did: a build fact that must survive a cache hit on this stage.
            "model_init": ctx.facts.get("model_init"),
            "io": {
                "placeholder_to_input": placeholder_to_input,
                "outputs": names,
                "output_kinds": kinds,
                # Registered before any later load of the program (export_utils.load_exported_program).
                "output_types": output_type_names(outputs),
            },
        },
    )

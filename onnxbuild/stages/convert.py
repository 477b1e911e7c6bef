"""convert: torch.onnx.export (dynamo exporter) of the ExportedProgram at the requested opset."""

from __future__ import annotations

import logging
import re
from typing import Any

from omegaconf import DictConfig

from onnxbuild.artifacts import file_sha256
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import StageError
from onnxbuild.export_utils import load_exported_program
from onnxbuild.onnx_utils import (
    canonicalize,
    input_dims,
    node_count,
    op_counts,
    rename_dim_params,
    save_model,
)
from onnxbuild.opset import EXPORTER_NATIVE_OPSET, convert_opset, default_opset
from onnxbuild.stages.capture import ANSI, first_line
from onnxbuild.torch_output import torch_output_to_log
from onnxbuild.translations import describe, translation_table

NAME = "convert"
VERSION = 1
log = logging.getLogger("onnxbuild")


SUMMARY_CAUSE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>: (.+)")


def exporter_reason(exc: BaseException) -> str:
    """The root cause from torch.onnx's error report ("## Exception summary"), else the first line."""
    text = ANSI.sub("", str(exc))
    _, found, summary = text.partition("## Exception summary")
    if found:
        for line in summary.splitlines():
            match = SUMMARY_CAUSE.match(line.strip())
            if match:
                return f"{match.group(1)}: {match.group(2)}"[:300]
    return first_line(exc)


def check_outputs_are_tensors(io: dict[str, Any]) -> None:
    for name, kind in zip(io["outputs"], io["output_kinds"], strict=False):
        if kind != "Tensor":
            raise StageError(
                f"output '{name}' is a Python {kind} (a SymInt/constant in the exported graph), not a tensor; "
                "ONNX graphs can only return tensors",
                stage=NAME,
                key="model",
                hint="return a tensor from forward, e.g. torch.tensor(x.numel()) or x.new_tensor(value)",
            )


def check_dynamic_dims(ctx: BuildContext, model: Any, stage: str) -> dict[str, list[int | str]]:
    """Every dim the spec declares dynamic must still be symbolic, under the spec's dim name."""
    dims = input_dims(model)
    for spec in ctx.specs:
        if spec.constant:
            continue
        if spec.name not in dims:
            raise StageError(
                f"input '{spec.name}' is missing from the ONNX graph (inputs: {list(dims)})",
                stage=stage,
                key="input.inputs",
                hint="an input the model ignores is dropped by the exporter; remove it from the spec",
            )
        for index, ddim in spec.dynamic.items():
            actual = dims[spec.name][index]
            # A symbolic dim is a name; the exporter writes a dim it specialized as a number,
            # sometimes as a dim_param string ("2"), which would otherwise look dynamic.
            if not isinstance(actual, str) or not actual or actual.strip().lstrip("-").isdigit():
                raise StageError(
                    f"dynamic dim '{ddim.name}' ({ddim.min}..{ddim.max}) of input '{spec.name}' "
                    f"became static ({actual}) in the {stage} graph",
                    stage=stage,
                    key=f"input.inputs.{spec.name}.dynamic",
                    hint=_static_dim_hint(ddim),
                )
    return dims


def _static_dim_hint(ddim: Any) -> str:
    if ddim.max - ddim.min <= 1:
        # torch re-traces during decomposition and treats a size guard such as `size > 1` as
        # narrowing the range: [1, 2] becomes [2, 2] and the size is baked into every Reshape.
        return (
            f"a range of two values is narrowed to one by the size guards torch records (e.g. size > 1): "
            f"widen it (max >= {ddim.min + 2}) or declare the dim static"
        )
    return "the graph fixes this size; declare it static or check the model for size-dependent code"


def symbol_mapping(ctx: BuildContext, model: Any) -> dict[str, str]:
    """Exporter symbol (s77) -> spec dim name (batch), read off the graph inputs."""
    dims = input_dims(model)
    mapping: dict[str, str] = {}
    for spec in ctx.specs:
        for index, ddim in spec.dynamic.items():
            actual = dims.get(spec.name, [])
            if index < len(actual) and isinstance(actual[index], str) and actual[index].isidentifier():
                mapping[actual[index]] = ddim.name
    return mapping


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:
    import onnx
    import torch

    io = upstream.info["io"]
    check_outputs_are_tensors(io)
    # fx_optimize hands on a program it loaded; capture hands on none (see stages/fx_optimize.py).
    ep = upstream.payload if upstream.payload is not None else load_exported_program(upstream.path, io)
    user_inputs = [name for name in ep.graph_signature.user_inputs if isinstance(name, str)]
    input_names = [io["placeholder_to_input"].get(name, name) for name in user_inputs]
    requested = int(section.opset)
    export_opset = max(requested, EXPORTER_NATIVE_OPSET)
    table = translation_table(section.get("translations"))
    try:
        with torch_output_to_log("convert"):
            program = torch.onnx.export(
                ep,
                (),
                dynamo=True,
                opset_version=export_opset,
                input_names=input_names,
                output_names=list(io["outputs"]),
                optimize=False,
                verbose=False,
                external_data=True,
                # Only when configured: the exporter's own default table otherwise.
                **({"custom_translation_table": table} if table else {}),
            )
    except Exception as exc:
        raise StageError(
            f"torch.onnx.export failed at opset {section.opset}: {exporter_reason(exc)}",
            stage=NAME,
            key="opset",
            hint="run with HYDRA_FULL_ERROR=1 for the exporter's report; an unsupported op needs a custom translation",
        ) from exc
    model = program.model_proto
    if requested < export_opset:
        model = convert_opset(model, requested)
    canonicalize(model)
    rename_dim_params(model, symbol_mapping(ctx, model))
    dims = check_dynamic_dims(ctx, model, NAME)
    path = ctx.stage_dir / "convert.onnx"
    files = save_model(model, path)
    try:
        # From the file just written: the proto would be serialized once more for the checker.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise StageError(
            f"onnx.checker rejected the graph: {first_line(exc)}",
            stage=NAME,
            key="opset",
            hint="try another opset",
        ) from exc
    opset = default_opset(model)
    if opset != requested:
        raise StageError(
            f"the exported graph has opset {opset}, not the requested {requested}",
            stage=NAME,
            key="opset",
            hint="pick an opset the exporter supports (18 or newer)",
        )
    return Artifact(
        path=path,
        digest=file_sha256(path),
        payload=model if len(files) == 1 else None,
        info={
            "nodes": node_count(model),
            "op_counts": op_counts(model),
            "opset": opset,
            "input_dims": dims,
            "custom_translations": describe(table),
        },
    )

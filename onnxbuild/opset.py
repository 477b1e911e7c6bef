"""Opset version conversion for targets below the exporter's native opset (18).

torch.onnx silently keeps opset 18 when its conversion fails (e.g. Reduce* axes that are not yet
constants), so onnxbuild folds constants first, converts, repairs attributes the target opset does
not know, and checks that the result really has the requested version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from onnxbuild.errors import StageError
from onnxbuild.torch_output import library_logs_to_log

if TYPE_CHECKING:
    import onnx

EXPORTER_NATIVE_OPSET = 18
log = logging.getLogger("onnxbuild")


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _drop_defaulted_unknown_attributes(model: onnx.ModelProto, source: int, target: int) -> int:
    """Remove attributes the target schema lacks when they hold the source schema's default value.

    An attribute at its default means the same as no attribute, so dropping it keeps semantics;
    any other unknown attribute is a real incompatibility and is reported.
    """
    import onnx
    from onnx import defs, helper

    dropped = 0
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            target_schema = defs.get_schema(node.op_type, target, "")
            source_schema = defs.get_schema(node.op_type, source, "")
        except defs.SchemaError:
            continue
        kept = []
        for attr in node.attribute:
            if attr.name in target_schema.attributes:
                kept.append(attr)
                continue
            default = source_schema.attributes.get(attr.name)
            default_value = default.default_value if default is not None else None
            if (
                default_value is not None
                and default_value.type
                and helper.get_attribute_value(default_value) == helper.get_attribute_value(attr)
            ):
                dropped += 1
                continue
            raise StageError(
                f"{node.op_type} node '{node.name}' uses attribute '{attr.name}', which opset {target} lacks",
                stage="convert",
                key="opset",
                hint=f"use opset >= {EXPORTER_NATIVE_OPSET}",
            )
        del node.attribute[:]
        node.attribute.extend(kept)
    if dropped:
        onnx.checker.check_model(model)
    return dropped


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Down-convert an exported model to `target`; fail clearly if the result is not at `target`."""
    import onnx_ir as ir
    from onnxscript import optimizer, version_converter

    source = default_opset(model) or EXPORTER_NATIVE_OPSET
    if source == target:
        return model
    folded = optimizer.optimize(model)  # version adapters need constant axes/shapes
    ir_model = ir.from_proto(folded)
    try:
        with library_logs_to_log("opset conversion", "onnxscript", "onnx_ir"):
            version_converter.convert_version(ir_model, target, fallback=True)
    except Exception as exc:  # the C API raises plain RuntimeErrors
        raise StageError(
            f"cannot convert from opset {source} to {target}: {str(exc).splitlines()[0]}",
            stage="convert",
            key="opset",
            hint=f"use opset >= {source}",
        ) from exc
    converted = ir.to_proto(ir_model)
    actual = default_opset(converted)
    if actual != target:
        raise StageError(
            f"opset conversion from {source} to {target} did not succeed (graph stays at opset {actual})",
            stage="convert",
            key="opset",
            hint=f"use opset >= {source}; some ops have no down-conversion adapter",
        )
    _drop_defaulted_unknown_attributes(converted, source, target)
    return converted

"""Small, dependency-light helpers on ONNX ModelProtos: counting, canonicalizing, saving."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxbuild import __version__

if TYPE_CHECKING:
    import onnx

# Models whose serialized size exceeds this are saved with external data (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Node metadata that holds machine-specific text (absolute source paths): never kept.
VOLATILE_METADATA_KEYS = ("pkg.torch.onnx.stack_trace",)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def _all_graphs(model: onnx.ModelProto):
    """The main graph and every subgraph (If/Loop/Scan bodies), depth first."""
    import onnx

    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def canonicalize(model: onnx.ModelProto) -> None:
    """Remove everything that varies between machines or runs, in place.

    Stack traces carry absolute source paths; doc strings and producer fields carry versions and
    free text. The manifest records tool versions instead.
    """
    model.doc_string = ""
    model.producer_name = "onnxbuild"
    model.producer_version = __version__
    for graph in _all_graphs(model):
        graph.doc_string = ""
        _scrub_nodes(graph.node)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.doc_string = ""
    for function in model.functions:
        function.doc_string = ""
        _scrub_nodes(function.node)


def _scrub_nodes(nodes: Any) -> None:
    """Drop doc strings and volatile metadata (source paths, stack traces) from nodes."""
    for node in nodes:
        node.doc_string = ""
        kept = [p for p in node.metadata_props if p.key not in VOLATILE_METADATA_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def rename_dim_params(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Replace exporter symbols (s77) by the spec's dim names (batch), in every shape, in place."""
    if not mapping:
        return
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b"
    )
    for graph in _all_graphs(model):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if not value.type.HasField("tensor_type"):
                continue
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)


def input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Per graph input: each dim as its int size or its symbolic name."""
    initializers = {init.name for init in model.graph.initializer}
    dims: dict[str, list[int | str]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = value.type.tensor_type.shape
        dims[value.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape.dim]
    return dims


def tensor_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the graph's typed values, initializers and constant attributes."""
    graph = model.graph
    types = {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types |= {t.data_type for t in graph.initializer}
    types |= {a.t.data_type for n in graph.node for a in n.attribute if a.HasField("t")}
    return types


def file_tensor_types(path: Path) -> set[int]:
    """tensor_types of a saved model (weights not read); empty when it cannot be read."""
    import onnx

    try:
        return tensor_types(onnx.load(str(path), load_external_data=False))
    except Exception:
        return set()


def is_large(model: onnx.ModelProto) -> bool:
    """Too big for one protobuf (2 GiB): ByteSize() itself fails past the limit."""
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    except (EncodeError, ValueError, OverflowError):
        return True


def inference_session(model: onnx.ModelProto, options: Any, providers: list[Any]) -> Any:
    """An onnxruntime session for an in-memory model, also one past the protobuf limit."""
    import tempfile

    import onnxruntime as ort

    if not is_large(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="onnxbuild-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        return ort.InferenceSession(str(path), options, providers=providers)  # weights read at load


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save next to its external data file when too large for one protobuf; return files written."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_large(model):
        path.write_bytes(model.SerializeToString(deterministic=True))
        return [path]
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    if data_path.exists():
        data_path.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name
    )
    return [path, data_path]


def load_model(path: Path) -> onnx.ModelProto:
    import onnx

    return onnx.load(str(path), load_external_data=True)

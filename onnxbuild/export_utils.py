"""Saving ExportedPrograms reproducibly: no machine-specific text in the .pt2 archive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# Node metadata that holds machine-specific text: `stack_trace` has absolute source file paths.
VOLATILE_NODE_META = ("stack_trace",)


def canonicalize_exported_program(ep: ExportedProgram) -> None:
    """Drop node metadata that differs between checkouts, in place (the graph is unchanged)."""
    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            for key in VOLATILE_NODE_META:
                node.meta.pop(key, None)


def save_exported_program(ep: ExportedProgram, path: Path) -> None:
    """torch.export.save after canonicalization: same program, same bytes, from any directory."""
    import torch

    canonicalize_exported_program(ep)
    torch.export.save(ep, str(path))


def output_dataclass_types(value: Any, depth: int = 0) -> list[type]:
    """The dataclass types (Hugging Face ModelOutput classes, plain @dataclass) in an output
    structure: torch.export serializes them by type name, so they must be pytree nodes."""
    import dataclasses

    if depth > 20:
        return []
    found: list[type] = []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found.append(type(value))
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return []
    for child in children:
        found.extend(t for t in output_dataclass_types(child, depth + 1) if t not in found)
    return found


def output_type_names(value: Any) -> list[str]:
    """`module:qualname` of each output dataclass type, for registering them before a later load."""
    return sorted({f"{cls.__module__}:{cls.__qualname__}" for cls in output_dataclass_types(value)})


def register_dataclass_type(cls: type) -> None:
    """Make a dataclass a pytree node (HF ModelOutput classes already are, once imported)."""
    import torch
    from torch.utils._pytree import SUPPORTED_NODES

    if cls not in SUPPORTED_NODES:
        torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")


def register_output_types(names: list[str]) -> None:
    """Import and register (as pytree nodes) the output container types a saved program names.

    After a cache hit on capture nothing has imported them: transformers registers its ModelOutput
    classes when their module is imported, and plain dataclasses are registered by capture only.
    """
    import importlib

    for name in names:
        module_name, _, qualname = name.partition(":")
        try:
            cls: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError) as exc:
            from onnxbuild.errors import StageError

            raise StageError(
                f"cannot import the model's output type {module_name}.{qualname}: {exc}",
                key="model._target_",
                hint="the saved program names this output class; build in the environment that captured it",
            ) from exc
        register_dataclass_type(cls)


def load_exported_program(path: Path, io: dict[str, Any] | None) -> ExportedProgram:
    """torch.export.load, with the output types the capture recorded registered first."""
    import torch

    from onnxbuild.torch_output import torch_output_to_log

    register_output_types(list((io or {}).get("output_types") or []))
    with torch_output_to_log(f"load {path.name}"):
        return torch.export.load(str(path))

"""Saving ExportedPrograms reproducibly: no machine-specific text in the .pt2 archive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

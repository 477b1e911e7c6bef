"""Random ops in an ONNX graph, and which outputs they feed.

A graph that samples (RandomNormalLike from `x + torch.randn(...)`, Bernoulli from training-mode
dropout...) can never match eager PyTorch numerically; comparing it would report a false mismatch.
Validation reports such outputs as non-deterministic instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def _random_ops_inside(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Random op types used by each local function (directly or through other functions)."""
    functions = {(f.domain, f.name): f for f in model.functions}
    memo: dict[tuple[str, str], set[str]] = {}

    def visit(key: tuple[str, str], stack: frozenset) -> set[str]:
        if key in memo:
            return memo[key]
        found: set[str] = set()
        for node in functions[key].node:
            found |= _node_random_ops(node, visit, stack | {key}, functions)
        memo[key] = found
        return found

    return {f"{d}::{n}": visit((d, n), frozenset()) for (d, n) in functions}


def _node_random_ops(node, visit, stack, functions) -> set[str]:  # noqa: ANN001 (onnx protos)
    import onnx

    found: set[str] = set()
    if node.op_type in RANDOM_OPS and node.domain in ("", "ai.onnx"):
        found.add(node.op_type)
    key = (node.domain, node.op_type)
    if key in functions and key not in stack:
        found |= visit(key, stack)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                found |= _node_random_ops(inner, visit, stack, functions)
    return found


def random_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, random op types) for top-level nodes that sample, directly or in a subgraph/function."""
    functions = {(f.domain, f.name): f for f in model.functions}
    inside = _random_ops_inside(model)
    result = []
    for node in model.graph.node:
        ops = _node_random_ops(node, lambda key, stack: inside[f"{key[0]}::{key[1]}"], frozenset(), functions)
        if ops:
            result.append((node.name or node.output[0], ",".join(sorted(ops))))
    return result


def outputs_fed_by(model: onnx.ModelProto, node_names: set[str]) -> dict[str, list[str]]:
    """For each graph output, the random nodes (by name) whose values reach it."""
    sources: dict[str, set[str]] = {}
    for node in model.graph.node:  # topological order
        name = node.name or node.output[0]
        reached: set[str] = set()
        for value in node.input:
            reached |= sources.get(value, set())
        for attr in node.attribute:  # subgraphs may read outer values
            for graph in [attr.g, *attr.graphs]:
                for inner in graph.node:
                    for value in inner.input:
                        reached |= sources.get(value, set())
        if name in node_names:
            reached.add(name)
        for value in node.output:
            sources[value] = reached
    return {out.name: sorted(sources.get(out.name, set())) for out in model.graph.output}

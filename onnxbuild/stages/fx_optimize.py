"""fx_optimize: graph passes on the ExportedProgram of an eval model, before ONNX conversion.

Passes rewrite the exported graph in place and keep its signature: BatchNorm folding reuses the
BatchNorm bias slot as the convolution bias, so no parameter is added or removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from onnxbuild.artifacts import file_sha256
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.export_utils import load_exported_program, save_exported_program

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

NAME = "fx_optimize"
VERSION = 1


def _call_count(ep: ExportedProgram) -> int:
    return sum(1 for n in ep.graph.nodes if n.op == "call_function")


def _state_key(ep: ExportedProgram, node: Any) -> str | None:
    """The state_dict key behind a placeholder that is a parameter or a persistent buffer."""
    if node is None or getattr(node, "op", None) != "placeholder":
        return None
    sig = ep.graph_signature
    key = sig.inputs_to_parameters.get(node.name) or sig.inputs_to_buffers.get(node.name)
    return key if key in ep.state_dict else None


def fold_batchnorm(ep: ExportedProgram) -> int:
    """Fold eval-mode batch_norm into the convolution that feeds it; return how many were folded."""
    import torch

    aten = torch.ops.aten
    convs = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
    folded = 0
    for bn in list(ep.graph.nodes):
        if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
            continue
        conv, weight, bias, mean, var, training, _momentum, eps = bn.args[:8]
        if training or getattr(conv, "target", None) not in convs or len(conv.users) != 1:
            continue
        conv_weight = conv.args[1]
        conv_bias = conv.args[2] if len(conv.args) > 2 else None
        keys = {
            name: _state_key(ep, node)
            for name, node in {
                "w": conv_weight,
                "gamma": weight,
                "beta": bias,
                "mean": mean,
                "var": var,
            }.items()
        }
        if any(k is None for k in keys.values()) or len(conv_weight.users) != 1 or len(bias.users) != 1:
            continue
        conv_bias_key = _state_key(ep, conv_bias) if conv_bias is not None else None
        if conv_bias is not None and (conv_bias_key is None or len(conv_bias.users) != 1):
            continue
        state = ep.state_dict
        with torch.no_grad():
            # In float64, rounded once at the end: the folded weights are as close to
            # conv-then-BN as the weight dtype allows (a deep net amplifies every rounding).
            w = state[keys["w"]]
            f64 = {name: state[key].double() for name, key in keys.items() if name != "w"}
            scale = f64["gamma"] / torch.sqrt(f64["var"] + eps)
            b = state[conv_bias_key].double() if conv_bias_key else torch.zeros_like(f64["mean"])
            new_w = w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))
            new_b = (b - f64["mean"]) * scale + f64["beta"]
        state[keys["w"]] = torch.nn.Parameter(new_w.to(w.dtype), requires_grad=False)
        state[keys["beta"]] = torch.nn.Parameter(new_b.to(w.dtype), requires_grad=False)
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        args[2] = bias
        conv.args = tuple(args)
        bn.replace_all_uses_with(conv)
        ep.graph.erase_node(bn)
        folded += 1
    return folded


def _noop_input(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node a no-op forwards unchanged (eval dropout, alias, detach, contiguous clone)."""
    import torch

    aten = torch.ops.aten
    target = node.target
    if target in (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default):
        return node.args[0] if len(node.args) > 2 and node.args[2] is False else None
    if target in (aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default):
        return node.args[0]
    if target is aten.clone.default and not node.kwargs.get("memory_format"):
        return node.args[0]
    return None


def remove_noops(ep: ExportedProgram) -> int:
    removed = 0
    outputs = {id(a) for n in ep.graph.nodes if n.op == "output" for a in n.args[0]}
    for node in list(ep.graph.nodes):
        if node.op != "call_function" or id(node) in outputs:
            continue
        source = _noop_input(node)
        if source is None:
            continue
        node.replace_all_uses_with(source)
        ep.graph.erase_node(node)
        removed += 1
    return removed


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:

    # The saved program, never the live one: the live one's fake tensors keep view strides and
    # offsets a loaded one lacks (other bytes in gpt2's .pt2), and its ShapeEnv keeps capture's
    # symbol sources (bert's batch read from attention_mask, not input_ids, in convert.onnx) and
    # makes the exporter's re-trace slower. Loaded once here, the program is then handed on live:
    # these passes keep it equal to what reloading fx_optimize.pt2 gives.
    ep = load_exported_program(upstream.path, upstream.info.get("io"))
    before = _call_count(ep)
    counts = {"batchnorm_folded": 0, "noops_removed": 0, "dead_removed": 0}
    if section.fold_batchnorm:
        counts["batchnorm_folded"] = fold_batchnorm(ep)
    if section.remove_noops:
        counts["noops_removed"] = remove_noops(ep)
    if section.dead_code_elimination:
        pre = _call_count(ep)
        ep.graph.eliminate_dead_code()
        counts["dead_removed"] = pre - _call_count(ep)
    ep.graph.lint()
    ep.graph_module.recompile()
    path = ctx.stage_dir / "fx_optimize.pt2"
    save_exported_program(ep, path)
    return Artifact(
        path=path,
        digest=file_sha256(path),
        payload=ep,
        info={"fx_nodes_before": before, "fx_nodes_after": _call_count(ep), **counts},
    )

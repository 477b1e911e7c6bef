"""simplify: onnxscript optimizer (constant folding, fusions) then onnxsim, keeping dynamic dims."""

from __future__ import annotations

from omegaconf import DictConfig

from onnxbuild.artifacts import file_sha256
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import StageError
from onnxbuild.onnx_utils import canonicalize, is_large, load_model, node_count, op_counts, save_model
from onnxbuild.stages.capture import first_line
from onnxbuild.stages.convert import check_dynamic_dims

NAME = "simplify"
VERSION = 1


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:
    import onnx

    model = upstream.payload if upstream.payload is not None else load_model(upstream.path)
    before = node_count(model)
    steps: dict[str, int] = {}
    if section.onnxscript_optimizer:
        import onnxscript.optimizer

        try:
            model = onnxscript.optimizer.optimize(model)
        except Exception as exc:
            raise StageError(
                f"onnxscript optimizer failed: {first_line(exc)}",
                stage=NAME,
                key="optimization.simplify.onnxscript_optimizer",
                hint="set it to false",
            ) from exc
        steps["after_onnxscript_optimizer"] = node_count(model)
    if section.onnxsim and is_large(model):
        # onnxsim serializes the whole model into one protobuf, which cannot exceed 2 GiB.
        ctx.warn("onnxsim skipped: the model is over the 2 GiB protobuf limit (onnxsim cannot load it)")
        steps["onnxsim_skipped_large_model"] = 1
    elif section.onnxsim:
        import onnxsim

        try:
            model, ok = onnxsim.simplify(model, check_n=0)
        except Exception as exc:
            raise StageError(
                f"onnxsim failed: {first_line(exc)}",
                stage=NAME,
                key="optimization.simplify.onnxsim",
                hint="set it to false",
            ) from exc
        if not ok:
            raise StageError(
                "onnxsim could not verify its result",
                stage=NAME,
                key="optimization.simplify.onnxsim",
                hint="set it to false",
            )
        steps["after_onnxsim"] = node_count(model)
    canonicalize(model)
    dims = check_dynamic_dims(ctx, model, NAME)
    path = ctx.stage_dir / "simplify.onnx"
    files = save_model(model, path)
    onnx.checker.check_model(str(path))  # from the file: no second serialization
    return Artifact(
        path=path,
        digest=file_sha256(path),
        payload=model if len(files) == 1 else None,
        info={
            "nodes_before": before,
            "nodes": node_count(model),
            **steps,
            "op_counts": op_counts(model),
            "input_dims": dims,
        },
    )

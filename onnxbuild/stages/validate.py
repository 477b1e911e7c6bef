"""validate: onnxruntime vs eager PyTorch on seeded inputs at several shapes; mismatch fails the build."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from onnxbuild.artifacts import write_json_atomic
from onnxbuild.compare import compare_output
from onnxbuild.context import Artifact, BuildContext
from onnxbuild.errors import StageError, ValidationFailed
from onnxbuild.input_sets import ValueSet, branch_coverage_warning, extra_validation_sets
from onnxbuild.inputs import make_inputs, split_call, to_numpy_feed, validation_shape_sets
from onnxbuild.stages.capture import first_line

NAME = "validate"
VERSION = 1
log = logging.getLogger("onnxbuild")


def ort_providers(device_name: str, index: int) -> list[Any]:
    if device_name == "cuda":
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path: Path, device_name: str, index: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=ort_providers(device_name, index))
    except Exception as exc:
        raise StageError(
            f"onnxruntime cannot load the model: {first_line(exc)}",
            stage=NAME,
            key="opset",
            hint="the graph uses an op or opset this onnxruntime does not support; try another opset",
        ) from exc


def flatten_outputs(outputs: Any) -> list[Any]:
    from torch.utils._pytree import tree_flatten

    return tree_flatten(outputs)[0]


def run(ctx: BuildContext, section: DictConfig, upstream: Artifact) -> Artifact:
    import numpy as np
    import torch

    io = upstream.info.get("io") or {}
    names = list(io.get("outputs", []))
    session = make_session(upstream.path, ctx.cfg.device.name, int(ctx.cfg.device.index))
    model = ctx.model()
    sets = validation_shape_sets(
        ctx.specs, bool(section.include_example_shape), bool(section.include_odd_shape)
    )
    results: list[dict[str, Any]] = []
    base_seed = int(ctx.cfg.seed) + 1
    # Named sets (both sides of a torch.cond...) and tokenized sentences come fixed from input_sets.
    extra = extra_validation_sets(ctx.cfg, ctx.specs, seed=base_seed + len(sets))
    branch_warning = branch_coverage_warning(upstream.path, ctx.cfg.input)
    if branch_warning:
        ctx.warn(branch_warning)
    for index, shape_set in enumerate([*sets, *extra]):
        if isinstance(shape_set, ValueSet):
            values = shape_set.values
        else:
            values = make_inputs(ctx.specs, shape_set.sizes, seed=base_seed + index)
        feed = to_numpy_feed(ctx.specs, values)
        device_values = {
            k: v.to(ctx.torch_device) if isinstance(v, torch.Tensor) else v for k, v in values.items()
        }
        args, kwargs = split_call(ctx.specs, device_values)
        with torch.no_grad():
            reference = [
                t.detach().float().cpu().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()
                for t in flatten_outputs(model(*args, **kwargs))
            ]
        try:
            actual = session.run(None, feed)
        except Exception as exc:
            raise StageError(
                f"onnxruntime failed on input set '{shape_set.label}' {shape_set.sizes}: {first_line(exc)}",
                stage=NAME,
                key="input.inputs",
                hint="the graph does not accept this size; narrow the dynamic range or check the model",
            ) from exc
        if len(actual) != len(reference):
            raise StageError(
                f"onnxruntime returned {len(actual)} outputs, eager PyTorch {len(reference)}", stage=NAME
            )
        outputs = {}
        for i, (ref, act) in enumerate(zip(reference, actual, strict=False)):
            name = names[i] if i < len(names) else f"output_{i}"
            outputs[name] = compare_output(
                np.asarray(ref), np.asarray(act), float(section.atol), float(section.rtol)
            )
        results.append(
            {
                "label": shape_set.label,
                "sizes": shape_set.sizes,
                "input_shapes": {k: list(v.shape) for k, v in feed.items()},
                "outputs": outputs,
                "passed": all(o["passed"] for o in outputs.values()),
            }
        )
    passed = all(r["passed"] for r in results)
    degenerate = _degenerate_outputs(results)
    for name in degenerate:
        ctx.warn(
            f"output '{name}' is constant across all validation inputs: the comparison is weak "
            "(give model.checkpoint or other weights)"
        )
    report = {
        "passed": passed,
        "atol": float(section.atol),
        "rtol": float(section.rtol),
        "providers": session.get_providers(),
        "input_sets": results,
        "degenerate_outputs": degenerate,
        "max_abs_error": max(
            (o.get("max_abs", 0.0) for r in results for o in r["outputs"].values()), default=0.0
        ),
        "max_rel_error": max(
            (o.get("max_rel", 0.0) for r in results for o in r["outputs"].values()), default=0.0
        ),
    }
    path = ctx.run_dir / "validation.json"
    write_json_atomic(path, report)
    if not passed:
        failed = [(r["label"], n, o) for r in results for n, o in r["outputs"].items() if not o["passed"]]
        label, name, stats = failed[0]
        raise ValidationFailed(
            f"output '{name}' differs from eager PyTorch on input set '{label}': {stats.get('reason')} "
            f"(max rel {stats.get('max_rel', float('nan')):.3g}; {len(failed)} failing output/set pair(s))",
            stage=NAME,
            key="validation.atol",
            hint=f"details in validation.json; atol >= {stats.get('min_atol_to_pass', float('nan')):.3g} would pass",
        )
    return Artifact(
        path=upstream.path, digest=upstream.digest, payload=upstream.payload, info={"report": report}
    )


def _degenerate_outputs(results: list[dict[str, Any]]) -> list[str]:
    names = results[0]["outputs"].keys() if results else []
    return [n for n in names if all(r["outputs"][n].get("reference_std", 0.0) == 0.0 for r in results)]

"""The script onnxbuild replaces: export resnet50 with dynamic batch, simplify, one ORT check.

Used by bench_resnet50.py as the baseline; it does the same core work as `onnxbuild model=resnet50`
without validation sets, manifests or reports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import torch
import torchvision


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    program = torch.onnx.export(
        ep, (), dynamo=True, opset_version=18, input_names=["input"], output_names=["output"]
    )
    simplified, ok = onnxsim.simplify(program.model_proto)
    assert ok
    path = out_dir / "model.onnx"
    onnx.save(simplified, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    print("max abs error", float(np.abs(got - expected).max()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""`python -m onnxbuild` as a user runs it: default resnet end to end, multirun, CLI errors."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from onnxbuild.init import apply_init
from onnxbuild.inputs import parse_specs
from tests.conftest import compose_config, run_cli, run_custom_cli


def model_path_from(stdout: str) -> Path:
    match = re.search(r"model:\s+(\S+model\.onnx)", stdout)
    assert match, stdout
    return Path(match.group(1))


@pytest.mark.slow
def test_default_build_is_resnet18_matching_eager(tmp_path: Path) -> None:
    proc = run_cli([], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_path = model_path_from(proc.stdout)
    run_dir = model_path.parent
    assert run_dir.is_relative_to(tmp_path / "outputs")
    for name in (
        "manifest.json",
        "report.json",
        "validation.json",
        "SHA256SUMS",
        "onnxbuild.log",
        ".hydra/config.yaml",
    ):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["model"]["name"] == "resnet18"
    assert manifest["capture_strategy"] in ("non_strict", "strict")
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "onnxsim"} <= set(manifest["versions"])
    [artifact] = manifest["artifacts"]
    assert artifact["path"] == "model.onnx" and artifact["size"] == model_path.stat().st_size
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "capture",
        "fx_optimize",
        "convert",
        "simplify",
        "validate",
        "benchmark",
    ]
    assert report["stages"][-1]["status"] == "skipped"  # optional, off by default
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in report["stages"][:-1])
    assert report["validation"]["passed"]

    onnx.checker.check_model(str(model_path))
    # No checkpoint: the default init is `informative` (seeded torchvision init, then BatchNorm
    # statistics calibrated by onnxbuild.init); rebuild exactly that reference independently.
    assert manifest["model_init"]["mode"] == "informative"
    assert manifest["model_init"]["batchnorm_calibrated"] == 20
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    apply_init(reference, "informative", parse_specs(compose_config([]).input), seed=0)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 1000)
        assert np.abs(got - expected).max() <= 1e-4
        assert expected.std() > 0


def test_multirun_opsets(tmp_path: Path) -> None:
    proc = run_cli(["-m", "opset=17,18", "model=tiny_cnn", "input=image32"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/model.onnx"))
    assert len(models) == 2
    opsets = sorted(next(o.version for o in onnx.load(str(m)).opset_import if o.domain == "") for m in models)
    assert opsets == [17, 18]
    for m in models:
        assert json.loads((m.parent / "report.json").read_text())["validation"]["passed"]


def test_cuda_without_cuda_is_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli(["device=cuda", "model=tiny_cnn", "input=image32"], cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cuda" in lines[0] and "device=cpu" in lines[0]
    assert not list(tmp_path.glob("outputs/**/model.onnx"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimization.bogus=1", "optimization.bogus: unknown config key"),
        ("modle=resnet", "modle: unknown config key"),
        ("opset=abc", "opset: Value 'abc'"),
        ("model=nope", "model: Could not find 'model/nope' (hint: choose one of: bert_tiny,"),
        ("+foo", "cannot parse the override: Error parsing override '+foo': missing EQUAL"),
        ("=5", "cannot apply the override: Config group override must be a string or a list"),
    ],
)
def test_hydra_composition_errors_are_one_line_with_the_key(
    tmp_path: Path, override: str, expected: str
) -> None:
    proc = run_cli([override], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxbuild: error: ") and expected in lines[0] and "(hint: " in lines[0]
    assert ", schema," not in lines[0]  # ConfigStore schema nodes are not presets to choose


def test_hydra_full_error_still_gives_the_traceback(tmp_path: Path) -> None:
    proc = run_cli(["modle=resnet"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, keep_full_error=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr


def test_failed_validation_exit_code_and_no_model(tmp_path: Path) -> None:
    proc = run_cli(
        [
            "model=custom",
            "model._target_=tests.models.CallCounterScale",
            "allowed_target_prefixes=[tests.]",
            "input=image32",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 3
    assert "[validate]" in proc.stderr
    assert not list(tmp_path.glob("outputs/**/model.onnx"))
    assert list(tmp_path.glob("outputs/**/model.FAILED.onnx"))


def test_a_groups_schema_node_is_not_a_preset(tmp_path: Path) -> None:
    proc = run_cli(["model=tiny_cnn", "input=image32", "device=schema"], cwd=tmp_path)
    assert (
        proc.returncode == 2
        and "onnxbuild: error: device: 'schema' is the group's typed schema" in proc.stderr
    )


def test_a_native_crash_leaves_its_traceback_in_the_log(tmp_path: Path) -> None:
    proc, run_dir = run_custom_cli(tmp_path, "models.segfaults", "input=image32")
    assert proc.returncode == -signal.SIGSEGV
    log = (run_dir / "onnxbuild.log").read_text()
    assert "Segmentation fault" in log and "tests/models.py" in log
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    assert not (run_dir / "model.onnx").exists()


def test_a_failed_capture_prints_one_line_and_logs_what_torch_printed(tmp_path: Path) -> None:
    """torch.export prints the partial FX graph to stderr and logs graph dumps: ~40 lines before ours."""
    proc, run_dir = run_custom_cli(tmp_path, "extension_models.PythonIfNet", "input=image32")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("stage ")]
    assert len(errors) == 1 and errors[0].startswith("onnxbuild: error: [capture]"), proc.stderr[-3000:]
    assert "def forward" not in proc.stdout + proc.stderr
    log = (run_dir / "onnxbuild.log").read_text()
    assert "torch output (kept off the terminal)" in log and "def forward" in log

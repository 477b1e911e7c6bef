"""Sweep pieces without building anything: presets, GPU choice, status files, the summary reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from onnxbuild import callbacks, cli, gpus
from onnxbuild.cli import config_dir
from onnxbuild.errors import StageError
from onnxbuild.inputs import parse_specs
from onnxbuild.jobstatus import read_status
from onnxbuild.sweep import collect, format_inputs, read_row, to_markdown, write_summary
from tests.conftest import compose_config

CONF = Path(config_dir())


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_values(cfg, key: str) -> list[str]:
    """Expand a hydra.sweeper.params entry the way Hydra's sweeper does (glob over group options)."""
    [override] = OverridesParser.create().parse_overrides([f"{key}={cfg.hydra.sweeper.params[key]}"])
    options = sorted(p.stem for p in (CONF / key).glob("*.yaml")) + ["schema"]  # schema: ConfigStore
    if override.is_sweep_override() and hasattr(override.value(), "filter"):
        return sorted(override.value().filter(options))
    return [str(v) for v in override.sweep_string_iterator()]


# --- presets -------------------------------------------------------------------------------------


def test_sweep_opsets_preset_is_multirun_17_to_23() -> None:
    cfg = compose_with_hydra(["+sweep=opsets"])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert sweep_values(cfg, "opset") == [str(o) for o in range(17, 24)]


def test_sweep_models_covers_every_buildable_model() -> None:
    cfg = compose_with_hydra(["+sweep=models"])
    models = sweep_values(cfg, "model")
    assert "custom" not in models and "schema" not in models
    assert set(models) == {p.stem for p in (CONF / "model").glob("*.yaml")} - {"custom"}
    for name in models:  # each must build without extra settings: nothing left missing
        model_cfg = compose_config([f"model={name}"]).model
        assert not OmegaConf.missing_keys(model_cfg), name


def test_sweep_shapes_presets_are_valid_specs() -> None:
    cfg = compose_with_hydra(["+sweep=shapes"])
    inputs = sweep_values(cfg, "input")
    assert len(inputs) >= 4
    dynamic = static = 0
    for name in inputs:
        specs = parse_specs(compose_config([f"input={name}"]).input)
        has_dynamic = any(s.dynamic for s in specs)
        dynamic += has_dynamic
        static += not has_dynamic
    assert dynamic >= 2 and static >= 2


def test_sweep_optimizations_covers_every_preset() -> None:
    cfg = compose_with_hydra(["+sweep=optimizations"])
    assert set(sweep_values(cfg, "optimization")) == {p.stem for p in (CONF / "optimization").glob("*.yaml")}


def test_summary_callback_is_configured() -> None:
    cfg = compose_with_hydra([])
    assert cfg.hydra.callbacks.sweep_summary._target_ == "onnxbuild.callbacks.SweepSummary"


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")  # cli filters it at run time
@pytest.mark.parametrize("launcher", ["submitit_slurm", "submitit_local"])
def test_submitit_presets_ask_gpus_only_for_cuda(launcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    key = "gpus_per_task" if launcher == "submitit_slurm" else "gpus_per_node"
    cpu = compose_with_hydra([f"hydra/launcher={launcher}", "device=cpu"])
    cuda = compose_with_hydra([f"hydra/launcher={launcher}", "device=cuda"])
    assert cpu.hydra.launcher._target_.endswith(
        "SlurmLauncher" if launcher == "submitit_slurm" else "LocalLauncher"
    )
    assert cpu.hydra.launcher[key] is None
    assert cuda.hydra.launcher[key] == (1 if launcher == "submitit_slurm" else 3)
    assert cpu.hydra.launcher.timeout_min >= 30
    assert cpu.hydra.launcher.submitit_folder.endswith("/.submitit/%j")  # logs under the sweep dir


# --- GPU choice ----------------------------------------------------------------------------------


def test_parse_visible() -> None:
    assert gpus.parse_visible(None) is None
    assert gpus.parse_visible("") == []
    assert gpus.parse_visible("-1") == []
    assert gpus.parse_visible("2, 3") == ["2", "3"]
    assert gpus.parse_visible("GPU-aa,GPU-bb") == ["GPU-aa", "GPU-bb"]


def test_visible_gpus_prefers_the_environment() -> None:
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "4,5"}, probe=lambda: ["0"]) == ["4", "5"]
    assert gpus.visible_gpus({}, probe=lambda: ["0", "1"]) == ["0", "1"]


def test_select_gpu_round_robin() -> None:
    assert [gpus.select_gpu(n, ["4", "5", "6"]) for n in range(7)] == ["4", "5", "6", "4", "5", "6", "4"]
    assert gpus.select_gpu(3, []) is None


def test_pin_gpu_sets_env_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_pinned", None)
    monkeypatch.setattr(gpus, "nvidia_smi_gpus", lambda: ["0", "1", "2", "3"])
    env: dict[str, str] = {}
    assert gpus.pin_gpu(6, env) == "2" and env["CUDA_VISIBLE_DEVICES"] == "2"
    # A reused worker cannot move to another GPU once CUDA may have started: it keeps its GPU.
    other: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "2"}
    assert gpus.pin_gpu(1, other) == "2" and other["CUDA_VISIBLE_DEVICES"] == "2"


def test_pin_gpu_respects_parent_mask_and_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_pinned", None)
    env = {"CUDA_VISIBLE_DEVICES": "5,7"}
    assert gpus.pin_gpu(3, env) == "7" and env["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.setattr(gpus, "_pinned", None)
    off = {"CUDA_VISIBLE_DEVICES": "5,7", "ONNXBUILD_PIN_GPU": "0"}
    assert gpus.pin_gpu(3, off) is None and off["CUDA_VISIBLE_DEVICES"] == "5,7"
    monkeypatch.setattr(gpus, "_pinned", None)
    none: dict[str, str] = {"CUDA_VISIBLE_DEVICES": ""}
    assert gpus.pin_gpu(0, none) is None


def test_pin_gpu_leaves_initialised_cuda_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_pinned", None)
    monkeypatch.setattr(gpus, "cuda_initialised", lambda: True)
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert gpus.pin_gpu(1, env) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_cli_pins_only_cuda_jobs_in_parallel_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_pinned", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cuda = compose_config(["device=cuda", "device.index=1"])
    assert cli._pin_gpu(cuda, 0, cli.BASIC_LAUNCHER) is None  # sequential: all jobs in this process
    assert cli._pin_gpu(compose_config(["device=cpu"]), 1, "x.JoblibLauncher") is None
    assert cli._pin_gpu(cuda, 3, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher") == "1"
    assert cuda.device.index == 0  # the pinned GPU is the only one the job sees
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_cuda_not_initialised_by_onnxbuild_on_cpu() -> None:
    assert gpus.cuda_initialised() is False


# --- status.json and the task wrapper -------------------------------------------------------------


def _job_cfg(tmp_path: Path, multirun: bool):
    cfg = compose_with_hydra(["model=tiny_cnn", "input=image32"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.mode = "MULTIRUN" if multirun else "RUN"
        cfg.hydra.job.num = 4
    HydraConfig.instance().set_config(cfg)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return task_cfg


def test_unexpected_exception_is_isolated_in_multirun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    import onnxbuild.pipeline

    def boom(cfg, run_dir):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(onnxbuild.pipeline, "run_build", boom)
    cfg = _job_cfg(tmp_path, multirun=True)
    with caplog.at_level(logging.ERROR, logger="onnxbuild"):
        cli._task(cfg)  # returns: the sweep goes on
    status = read_status(tmp_path)
    assert status["status"] == "failed" and status["stage"] == "internal" and status["job"] == 4
    assert status["reason"] == "RuntimeError: boom second line"
    assert "Traceback" in caplog.text and "boom" in caplog.text
    assert "job 4" in capsys.readouterr().err


def test_build_error_in_multirun_and_single_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxbuild.pipeline

    def fail(cfg, run_dir):
        raise StageError("graph broke", stage="convert", key="opset", hint="try 18")

    monkeypatch.setattr(onnxbuild.pipeline, "run_build", fail)
    cli._task(_job_cfg(tmp_path / "m", multirun=True))
    status = read_status(tmp_path / "m")
    assert (status["status"], status["stage"], status["exit_code"]) == ("failed", "convert", 1)
    assert status["reason"] == "opset: graph broke (hint: try 18)"
    with pytest.raises(SystemExit) as exc:
        cli._task(_job_cfg(tmp_path / "s", multirun=False))
    assert exc.value.code == 1
    assert read_status(tmp_path / "s")["stage"] == "convert"


def test_unexpected_exception_in_single_run_is_one_line_or_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import onnxbuild.pipeline

    monkeypatch.setattr(onnxbuild.pipeline, "run_build", lambda cfg, run_dir: 1 / 0)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli._task(_job_cfg(tmp_path, multirun=False))
    assert exc.value.code == 1
    assert read_status(tmp_path)["stage"] == "internal"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[internal] ZeroDivisionError: division by zero (traceback in" in err[0]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.delenv(cli.COMPACT_ERRORS_ENV, raising=False)
    with pytest.raises(ZeroDivisionError):
        cli._task(_job_cfg(tmp_path, multirun=False))


def test_a_missing_mandatory_value_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf.errors import MissingMandatoryValue

    import onnxbuild.pipeline

    def missing(cfg, run_dir):
        raise MissingMandatoryValue("Missing mandatory value: model._target_")

    monkeypatch.setattr(onnxbuild.pipeline, "run_build", missing)
    with pytest.raises(SystemExit) as exc:
        cli._task(_job_cfg(tmp_path, multirun=False))
    assert exc.value.code == 2 and read_status(tmp_path)["stage"] == "preflight"


# --- summary from disk ----------------------------------------------------------------------------


def _fake_job(root: Path, num: int, overrides: list[str], status: dict | None, opset: int = 18) -> Path:
    run_dir = root / f"{num}-job"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "opset": opset,
        "model": {"name": "tiny_cnn"},
        "input": {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3, 32, 32],
                    "dynamic": {0: {"name": "batch", "min": 1, "max": 16}},
                }
            ]
        },
    }
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


def test_summary_rows_from_disk(tmp_path: Path) -> None:
    ok = _fake_job(tmp_path, 0, ["opset=18"], {"status": "ok", "job": 0, "overrides": ["opset=18"]})
    (ok / "report.json").write_text(json.dumps({
        "wall_seconds": 2.5,
        "stages": [
            {"name": "capture", "status": "ok", "cache": {"hit": True}, "info": {}},
            {"name": "convert", "status": "ok", "cache": "miss", "info": {"nodes": 12}},
            {"name": "simplify", "status": "ok", "cache": {"hit": False}, "info": {"nodes": 9}},
        ],
        "validation": {"max_abs_error": 1e-7, "max_rel_error": 2e-6},
    }))  # fmt: skip
    (ok / "manifest.json").write_text(
        json.dumps({"artifacts": [{"path": "model.onnx", "size": 100, "sha256": "ab" * 32}]})
    )
    killed = _fake_job(
        tmp_path, 2, ["opset=20"], {"status": "running", "job": 2}, opset=20
    )  # killed mid-build
    (killed / "onnxbuild.log").write_text(
        "[t][onnxbuild][INFO] stage capture ...\n[t][onnxbuild][INFO] stage convert ...\n"
    )
    _fake_job(tmp_path, 1, ["opset=19"], None, opset=19)  # never got to write a status
    outcome = collect(tmp_path)
    assert [r.job for r in outcome.rows] == [0, 1, 2]
    first = outcome.rows[0]
    assert (first.status, first.nodes, first.size_bytes, first.cache_hits) == ("ok", 9, 100, "1/3")
    assert (first.max_abs_error, first.build_seconds, first.sha256) == (1e-7, 2.5, "ab" * 32)
    assert first.inputs == "input[batch(1..16),3,32,32]"
    assert [r.status for r in outcome.failed] == ["failed", "failed"]
    assert "no status.json" in outcome.rows[1].reason and outcome.rows[1].opset == 19
    assert "still says running" in outcome.rows[2].reason and outcome.rows[2].stage == "convert"
    assert outcome.rows[1].stage == ""  # no log, no report: the stage is not known
    md = to_markdown(outcome)
    assert "3 jobs, 1 ok, 2 failed" in md and "| 1 | opset=19 | FAILED |" in md


def test_summary_ignores_submitit_folder(tmp_path: Path) -> None:
    _fake_job(tmp_path, 0, ["opset=18"], {"status": "ok", "job": 0})
    (tmp_path / ".submitit" / "123").mkdir(parents=True)
    (tmp_path / ".submitit" / "123" / "status.json").write_text("{}")
    assert len(collect(tmp_path).rows) == 1


def test_reason_cells_stay_one_line(tmp_path: Path) -> None:
    run = _fake_job(tmp_path, 0, ["x=1"], {"status": "failed", "stage": "capture", "reason": "a|b\nc"})
    row = read_row(run, tmp_path)
    assert row.reason == "a|b c"
    assert "a\\|b c" in to_markdown(collect(tmp_path))


def test_callback_writes_files_and_records_outcome(tmp_path: Path, capsys) -> None:
    _fake_job(tmp_path, 0, ["opset=18"], {"status": "failed", "stage": "validate", "reason": "mismatch"})
    callbacks.reset()
    callbacks.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert (tmp_path / "summary.csv").read_text().count("\n") == 2
    assert "mismatch" in (tmp_path / "summary.md").read_text()
    assert "| validate | mismatch |" in capsys.readouterr().out
    assert [r.job for r in callbacks.last_outcome().failed] == [0]  # job number from .hydra/hydra.yaml
    write_summary(tmp_path)  # idempotent rewrite
    callbacks.reset()


def test_format_inputs_static_and_constant() -> None:
    spec = {"inputs": [{"name": "x", "shape": [1, 3]}, {"name": "scale", "constant": True, "value": 0.5}]}
    assert format_inputs(spec) == "x[1,3] scale=0.5"
    assert format_inputs(None) == ""


def test_concurrent_workers_claim_distinct_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Jobs 0 and 2 both map to GPU 0 of 2 by number; the second live worker must take GPU 1.
    held = []
    for job in (0, 2, 4):
        monkeypatch.setattr(gpus, "_pinned", None)
        monkeypatch.setattr(gpus, "_claim", None)
        env = {"CUDA_VISIBLE_DEVICES": "0,1"}
        held.append((gpus.pin_gpu(job, env, lock_dir=tmp_path / "locks"), gpus._claim))
    assert [gpu for gpu, _ in held] == ["0", "1", "0"]  # third worker: all claimed, shares by number
    assert held[2][1] is None
    held[0][1].release()  # worker 0 exits: its GPU is free again
    monkeypatch.setattr(gpus, "_pinned", None)
    assert gpus.pin_gpu(2, {"CUDA_VISIBLE_DEVICES": "0,1"}, lock_dir=tmp_path / "locks") == "0"
    gpus._claim.release()
    held[1][1].release()


def test_aborted_sweep_still_gets_a_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # A launcher that raises (a worker killed mid-job) makes Hydra skip on_multirun_end.
    _fake_job(tmp_path, 0, ["opset=18"], {"status": "ok", "job": 0})
    _fake_job(tmp_path, 1, ["opset=19"], {"status": "running", "job": 1}, opset=19)

    def aborted_sweep() -> None:
        callbacks.SweepSummary().on_multirun_start(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
        raise SystemExit(1)

    monkeypatch.setattr(cli, "_hydra_main", aborted_sweep)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    rows = list((tmp_path / "summary.csv").read_text().splitlines())
    assert len(rows) == 3 and ",failed," in rows[2] and "still says running" in rows[2]
    assert "sweep was aborted" in capsys.readouterr().err
    callbacks.reset()


def test_main_exit_code_follows_the_summary(tmp_path: Path, error_env: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch = error_env
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})

    def sweep() -> None:
        callbacks.SweepSummary().on_multirun_start(cfg)
        callbacks.SweepSummary().on_multirun_end(cfg)

    monkeypatch.setattr(cli, "_hydra_main", sweep)
    _fake_job(tmp_path, 0, ["opset=18"], {"status": "ok", "job": 0})
    cli.main()  # all ok: returns normally (exit code 0)
    _fake_job(tmp_path, 1, ["opset=19"], {"status": "failed", "job": 1, "stage": "convert", "reason": "no"})
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    assert "sweep job 1 failed [convert] no" in capsys.readouterr().err
    callbacks.reset()


@pytest.fixture
def error_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """cli.main() sets HYDRA_FULL_ERROR / ONNXBUILD_COMPACT_ERRORS in os.environ: undo it afterwards."""
    for name in ("HYDRA_FULL_ERROR", cli.COMPACT_ERRORS_ENV):
        monkeypatch.setenv(name, "")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


def _raise_internal() -> None:
    raise RuntimeError("exporter\nexploded")


def test_main_prints_an_unexpected_error_on_one_line(error_env: pytest.MonkeyPatch, capsys) -> None:
    error_env.setattr(cli, "_hydra_main", _raise_internal)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "onnxbuild: error: [internal] RuntimeError: exporter exploded "
        "(hint: HYDRA_FULL_ERROR=1 prints the traceback)"
    ]


def test_main_raises_the_unexpected_error_when_tracebacks_are_asked_for(
    error_env: pytest.MonkeyPatch,
) -> None:
    error_env.setenv("HYDRA_FULL_ERROR", "1")
    error_env.setattr(cli, "_hydra_main", _raise_internal)
    with pytest.raises(RuntimeError, match="exploded"):
        cli.main()

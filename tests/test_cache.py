"""Stage cache: keys follow what a stage reads, entries are checked, hits skip work and torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxbuild import versions
from onnxbuild.cache import StageCache, compute_key
from onnxbuild.context import Artifact
from onnxbuild.pipeline import STAGES, run_build, stage_key
from tests.conftest import REPO, TINY, compose_config, run_cli

SPEC = {s.name: s for s in STAGES}
UPSTREAM = Artifact(path=Path("x"), digest="0" * 64, info={"io": {"outputs": ["output"]}})


def keys(*overrides: str) -> dict[str, str]:
    cfg = compose_config([*TINY, *overrides])
    return {
        "capture": stage_key(SPEC["capture"], cfg, None),
        "fx_optimize": stage_key(SPEC["fx_optimize"], cfg, UPSTREAM),
        "convert": stage_key(SPEC["convert"], cfg, UPSTREAM),
        "simplify": stage_key(SPEC["simplify"], cfg, UPSTREAM),
        "validate": stage_key(SPEC["validate"], cfg, UPSTREAM),
    }


def test_cache_off_override() -> None:
    assert compose_config([*TINY, "cache=off"]).cache.enabled is False
    assert compose_config(TINY).cache.enabled is True


def test_key_is_stable_and_ignores_cache_settings(tmp_path: Path) -> None:
    assert keys() == keys()
    assert keys() == keys("cache=off") == keys(f"cache.root={tmp_path}")


def test_opset_changes_convert_key_but_not_capture_or_fx() -> None:
    base, other = keys(), keys("opset=17")
    assert other["convert"] != base["convert"]
    assert other["capture"] == base["capture"] and other["fx_optimize"] == base["fx_optimize"]


def test_upstream_digest_and_io_are_part_of_the_key() -> None:
    cfg = compose_config(TINY)
    changed = Artifact(path=Path("x"), digest="1" * 64, info=UPSTREAM.info)
    renamed = Artifact(path=Path("x"), digest=UPSTREAM.digest, info={"io": {"outputs": ["logits"]}})
    base = stage_key(SPEC["convert"], cfg, UPSTREAM)
    assert stage_key(SPEC["convert"], cfg, changed) != base
    assert stage_key(SPEC["convert"], cfg, renamed) != base


def test_checkpoint_content_changes_the_key(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"first")
    first = keys(f"model.checkpoint={ckpt}")
    moved = tmp_path / "elsewhere" / "w.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(b"first")
    assert keys(f"model.checkpoint={moved}")["capture"] == first["capture"]  # content, not path
    ckpt.write_bytes(b"second")
    os.utime(ckpt, ns=(1, 1))  # a new mtime as well, whatever the file system's resolution
    second = keys(f"model.checkpoint={ckpt}")
    assert second["capture"] != first["capture"] and second["validate"] != first["validate"]
    assert second["convert"] == first["convert"]  # convert does not read the weights directly


def test_simulated_tool_version_changes_the_keys_of_stages_using_it(monkeypatch: pytest.MonkeyPatch) -> None:
    base = keys()
    real = versions.package_version

    def bumped(name: str, pkg: str) -> str | None:
        return "999.0" if name == pkg else real(name)

    monkeypatch.setattr(versions, "package_version", lambda name: bumped(name, "onnxsim"))
    after = keys()
    assert after["simplify"] != base["simplify"]
    assert after["capture"] == base["capture"] and after["convert"] == base["convert"]
    monkeypatch.setattr(versions, "package_version", lambda name: bumped(name, "torch"))
    after = keys()
    assert after["capture"] != base["capture"] and after["convert"] != base["convert"]
    assert after["validate"] != base["validate"] and after["simplify"] == base["simplify"]


def test_store_lookup_and_corrupt_entry_is_discarded(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    src = tmp_path / "run" / "stages" / "a.onnx"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"payload" * 100)
    key = compute_key({"stage": "t"})
    with cache.lock(key):
        cache.store(key, "t", {"stages/a.onnx": src}, {"io": {"outputs": ["y"]}}, "stages/a.onnx")
    entry = cache.lookup(key)
    assert entry is not None and entry.info == {"io": {"outputs": ["y"]}}
    restored = entry.restore(tmp_path / "run2")
    assert restored["stages/a.onnx"].read_bytes() == b"payload" * 100
    # One byte changed in place (same size): the stamp differs, the digest check catches it.
    cached = entry.file("stages/a.onnx")
    os.chmod(cached, 0o644)
    with open(cached, "r+b") as handle:
        handle.write(b"X")
    assert cache.lookup(key) is None
    assert not cache.entry_dir(key).exists()


def test_half_written_entry_is_never_visible(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    key = compute_key({"stage": "t2"})
    leftover = cache.root / "tmp" / f"{key}.123.deadbeef" / "files"
    leftover.mkdir(parents=True)  # a crashed writer's temp dir
    assert cache.lookup(key) is None
    broken = cache.entry_dir(key)
    broken.mkdir(parents=True)  # an entry dir without meta.json
    assert cache.lookup(key) is None and not broken.exists()


def test_rebuild_hits_every_stage_and_gives_identical_outputs(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"cache.root={tmp_path / 'cache'}"])
    first = run_build(cfg, tmp_path / "a")
    assert first.report["cache"]["hits"] == []
    second = run_build(cfg, tmp_path / "b")
    assert second.report["cache"]["hits"] == ["capture", "fx_optimize", "convert", "simplify", "validate"]
    assert second.report["cache"]["computed"] == []
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert (tmp_path / "b" / "validation.json").is_file()
    assert second.report["validation"] == first.report["validation"]
    for name in ("capture.pt2", "fx_optimize.pt2", "convert.onnx", "simplify.onnx"):
        assert (tmp_path / "b" / "stages" / name).read_bytes() == (
            tmp_path / "a" / "stages" / name
        ).read_bytes()
    # The published model is a file of its own: editing it in place leaves the cache and run a alone.
    published = tmp_path / "b" / "model.onnx"
    assert published.stat().st_nlink == 1
    with open(published, "r+b") as handle:
        handle.write(b"\0")
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (
        tmp_path / "a" / "stages" / "simplify.onnx"
    ).read_bytes()

    # Corrupt the cached simplify output (one byte, in place): detected, discarded, rebuilt.
    simplify_key = next(s["cache"]["key"] for s in second.stages if s["name"] == "simplify")
    cached = StageCache(tmp_path / "cache").entry_dir(simplify_key) / "files" / "stages" / "simplify.onnx"
    os.chmod(cached, 0o644)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(cached, "r+b") as handle:
        handle.write(bytes(data))
    third = run_build(cfg, tmp_path / "c")
    assert third.report["cache"]["computed"] == ["simplify"]
    assert third.manifest == first.manifest


@pytest.mark.parametrize(
    ("overrides", "first_recomputed"),
    [
        ([*TINY[:1], "input=image32_dynamic_hw"], "convert"),
        # A live ExportedProgram gave other bytes than a loaded one: view strides in gpt2's
        # fx_optimize.pt2, the symbol source of bert's batch dim in convert.onnx.
        (["model=gpt2_tiny", "input=text_seq", "validation.enabled=false"], "fx_optimize"),
        (["model=bert_tiny", "input=text_seq", "validation.enabled=false"], "convert"),
    ],
)
def test_partly_cached_build_gives_the_cold_build_bytes(
    tmp_path: Path, overrides: list[str], first_recomputed: str
) -> None:
    """A cold build and one that resumes after cache hits must give the same bytes downstream,
    whichever in-memory objects the stages hand each other."""
    cold = run_build(compose_config([*overrides, "cache=off"]), tmp_path / "cold")
    cfg = compose_config([*overrides, f"cache.root={tmp_path / 'cache'}"])
    warm = run_build(cfg, tmp_path / "warm")
    cache = StageCache(tmp_path / "cache")
    names = [s["name"] for s in warm.stages if "cache" in s]
    for record in warm.stages[names.index(first_recomputed) :]:
        if "cache" in record:
            cache.discard(record["cache"]["key"], "test: recompute from the loaded upstream file")
    partly = run_build(cfg, tmp_path / "partly")
    assert partly.report["cache"]["hits"] == names[: names.index(first_recomputed)]
    for name in ("fx_optimize.pt2", "convert.onnx", "simplify.onnx"):
        assert (tmp_path / "partly" / "stages" / name).read_bytes() == (
            tmp_path / "cold" / "stages" / name
        ).read_bytes(), name
    assert partly.manifest == cold.manifest


def test_corruption_that_keeps_mtime_is_caught_when_published(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"cache.root={tmp_path / 'cache'}", "validation.enabled=false"])
    first = run_build(cfg, tmp_path / "a")
    simplify_key = next(s["cache"]["key"] for s in first.stages if s["name"] == "simplify")
    cached = StageCache(tmp_path / "cache").entry_dir(simplify_key) / "files" / "stages" / "simplify.onnx"
    stat = cached.stat()
    os.chmod(cached, 0o644)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0x01
    with open(cached, "r+b") as handle:
        handle.write(bytes(data))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot: same size, same mtime
    second = run_build(cfg, tmp_path / "b")
    assert second.manifest["artifacts"] == first.manifest["artifacts"]
    assert "simplify" in second.report["cache"]["computed"]


NOOP_PROBE = """
import json, sys, time
start = time.perf_counter()
sys.argv = ["onnxbuild", *sys.argv[1:]]
try:
    from onnxbuild.cli import main  # not `python -m onnxbuild`: its fast exit would skip the probe
    main()
except SystemExit as exc:
    if exc.code:
        raise
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "onnxscript", "onnxsim",
                                                          "onnxruntime", "onnx"})
print("PROBE " + json.dumps({"heavy": heavy, "seconds": time.perf_counter() - start}))
"""


def test_noop_rebuild_imports_no_heavy_library(tmp_path: Path) -> None:
    args = [*TINY, f"cache.root={tmp_path / 'cache'}"]
    cold = run_cli([*args, f"hydra.run.dir={tmp_path / 'cold'}"], cwd=tmp_path)
    assert cold.returncode == 0, cold.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-c", NOOP_PROBE, *args, f"hydra.run.dir={tmp_path / 'noop'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.split("PROBE ")[-1])
    assert probe["heavy"] == []
    report = json.loads((tmp_path / "noop" / "report.json").read_text())
    assert report["cache"]["computed"] == [] and len(report["cache"]["hits"]) == 5
    assert (tmp_path / "noop" / "model.onnx").read_bytes() == (tmp_path / "cold" / "model.onnx").read_bytes()


def test_two_concurrent_builds_capture_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onnxbuild",
                *TINY,
                f"cache.root={tmp_path / 'cache'}",
                f"hydra.run.dir={tmp_path / name}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b")]
    hits = sorted(next(s["cache"]["hit"] for s in r["stages"] if s["name"] == "capture") for r in reports)
    assert hits == [False, True]  # exactly one capture ran
    for stage in ("fx_optimize", "convert", "simplify", "validate"):
        assert sum(stage in r["cache"]["computed"] for r in reports) == 1, stage
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_opset_sweep_captures_once(tmp_path: Path) -> None:
    proc = run_cli(["-m", "opset=17,18", *TINY, f"cache.root={tmp_path / 'cache'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/report.json"))
    assert len(reports) == 2
    caches = [json.loads(r.read_text())["cache"] for r in reports]
    assert [c["hits"] for c in caches] == [[], ["capture", "fx_optimize"]]
    assert caches[1]["computed"] == ["convert", "simplify", "validate"]


def test_cache_cli_shows_size_and_prunes(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    src = tmp_path / "f.bin"
    src.write_bytes(b"z" * 2048)
    for i in range(3):
        key = compute_key({"i": i})
        with cache.lock(key):
            cache.store(key, "capture", {"stages/f.bin": src}, {}, "stages/f.bin")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    info = subprocess.run(
        [sys.executable, "-m", "onnxbuild.cache", "--root", str(cache.root)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "3 entries" in info.stdout and "capture" in info.stdout
    pruned = subprocess.run(
        [sys.executable, "-m", "onnxbuild.cache", "--root", str(cache.root), "prune", "--max-size", "4K"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "removed 1 entries" in pruned.stdout and "2 entries" in pruned.stdout
    assert len(cache.entries()) == 2
    from onnxbuild.cache import main as cache_main

    for bad in (["--max-size", "20X"], ["--older-than", "-5"]):  # refused, nothing removed
        with pytest.raises(SystemExit) as exc:
            cache_main(["--root", str(cache.root), "prune", *bad])
        assert exc.value.code == 2
    assert len(cache.entries()) == 2
    with pytest.raises(SystemExit) as exc:  # a mistyped root is not an empty cache
        cache_main(["--root", str(tmp_path / "no-such-cache"), "info"])
    assert exc.value.code == 2 and not (tmp_path / "no-such-cache").exists()


def test_a_local_helper_module_the_factory_imports_changes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mypkg/nets.py builds the model; the activation lives in mypkg/layers.py (and util.py, a
    # top-level module next to the package). Editing either must invalidate capture and validate.
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import torch\nimport util\nfrom .layers import act\n\n"
        "def build_net():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))\n"
    )
    (package / "layers.py").write_text("import torch\nact = torch.relu\n")
    (tmp_path / "util.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["model=custom", "model._target_=mypkg.nets.build_net", "model.allowed_prefixes=[mypkg.]"]
    before = keys(*overrides)
    (package / "layers.py").write_text("import torch\nact = torch.tanh\n")
    after_layers = keys(*overrides)
    (tmp_path / "util.py").write_text("SCALE = 2\n")
    after_util = keys(*overrides)
    for stage in ("capture", "validate"):
        assert len({before[stage], after_layers[stage], after_util[stage]}) == 3, stage
    assert before["convert"] == after_util["convert"]  # the upstream digest carries the change
    from onnxbuild.fingerprint import target_identity

    assert sorted(target_identity("mypkg.nets.build_net")["local_modules"]) == [
        "mypkg",
        "mypkg.layers",
        "mypkg.nets",
        "util",
    ]


def test_a_module_the_factory_imports_at_run_time_invalidates_the_cached_capture(tmp_path: Path) -> None:
    """importlib.import_module inside the factory: invisible to reading imports. It used to give a
    5/5 cache hit on the old graph after the module changed."""
    package = tmp_path / "rtpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import importlib\nimport torch\n\n\nclass Scaled(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.scale = importlib.import_module('rtpkg.constants').SCALE\n"
        "        self.offset = importlib.import_module('rt_plugin').OFFSET\n\n"
        "    def forward(self, x):\n        return x * self.scale + self.offset\n"
    )
    (package / "constants.py").write_text("SCALE = 2.0\n")
    (tmp_path / "rt_plugin.py").write_text("OFFSET = 1.0\n")
    args = [
        "model=custom",
        "model._target_=rtpkg.nets.Scaled",
        "model.allowed_prefixes=[rtpkg.]",
        "input.inputs=[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]",
        f"cache.root={tmp_path / 'cache'}",
    ]
    env = {"PYTHONPATH": str(tmp_path)}

    def build(name: str) -> dict:
        proc = run_cli([*args, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / name / "report.json").read_text())

    first = build("a")
    assert sorted(first["stages"][0]["info"]["runtime_modules"]) == ["rt_plugin", "rtpkg.constants"]
    assert build("b")["cache"]["computed"] == []  # unchanged: every stage reused
    (package / "constants.py").write_text("SCALE = 5.0\n")
    third = build("c")
    assert "capture" in third["cache"]["computed"]
    assert (tmp_path / "c" / "model.onnx").read_bytes() != (tmp_path / "a" / "model.onnx").read_bytes()
    (tmp_path / "rt_plugin.py").write_text("OFFSET = 3.0\n")
    assert "capture" in build("d")["cache"]["computed"]


def test_an_unusable_cache_root_is_a_config_error_before_any_stage(tmp_path: Path) -> None:
    from onnxbuild.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        run_build(compose_config([*TINY, f"cache.root={blocker}/cache"]), tmp_path / "run")
    assert info.value.key == "cache.root" and info.value.exit_code == 2
    assert not (tmp_path / "run" / "stages").exists()


def test_cache_max_size_prunes_after_a_build_and_run_dirs_keep_their_files(tmp_path: Path) -> None:
    from onnxbuild.errors import ConfigError

    cfg = compose_config([*TINY, f"cache.root={tmp_path / 'cache'}", "cache.max_size=1K"])
    result = run_build(cfg, tmp_path / "a")
    assert result.report["cache"]["pruned"] >= 4  # every entry is bigger than 1 KiB
    assert len(StageCache(tmp_path / "cache").entries()) <= 1
    assert (tmp_path / "a" / "stages" / "convert.onnx").is_file() and (
        tmp_path / "a" / "model.onnx"
    ).is_file()
    with pytest.raises(ConfigError) as info:
        run_build(
            compose_config([*TINY, f"cache.root={tmp_path / 'cache'}", "cache.max_size=lots"]), tmp_path / "b"
        )
    assert info.value.key == "cache.max_size"


def test_a_file_named_in_model_kwargs_counts_by_content(tmp_path: Path) -> None:
    # A factory that loads its own weights from model.kwargs.weights: retraining the file in place
    # must invalidate capture and validate, and the manifest records the file's digest.
    import torch

    from onnxbuild.zoo import TinyCNN

    weights = tmp_path / "epoch.pt"
    torch.manual_seed(1)
    torch.save(TinyCNN().state_dict(), weights)
    overrides = [
        "model=custom",
        "model._target_=tests.models.tiny_from_weights",
        "allowed_target_prefixes=[tests.]",
        f"+model.kwargs.weights={weights}",
    ]
    before = keys(*overrides)
    torch.manual_seed(2)
    torch.save(TinyCNN().state_dict(), weights)
    after = keys(*overrides)
    assert before["capture"] != after["capture"] and before["validate"] != after["validate"]
    from onnxbuild.fingerprint import input_digests

    digests = input_digests(compose_config([*TINY, *overrides]))
    assert (
        digests["model.kwargs.weights"]["name"] == "epoch.pt"
        and len(digests["model.kwargs.weights"]["sha256"]) == 64
    )

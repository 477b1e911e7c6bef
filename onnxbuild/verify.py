"""`python -m onnxbuild.verify RUN_DIR`: prove a run's artifacts are what its config produces.

Rebuilds from the run's recorded config (manifest.json) in a fresh temporary output root with the
cache off, then checks every artifact listed in the manifest twice: the file in RUN_DIR and the
rebuilt file must both have the recorded sha256. Input files (checkpoints...) must still have their
recorded digests, and tool versions that differ from the recorded ones are listed, since they are
the usual reason for a mismatch. Exit code 0 only on a full match.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.artifacts import file_sha256


def recorded_config(manifest: dict[str, Any], out_root: Path) -> DictConfig:
    """The run's config, typed by the schema, with the cache off and outputs under `out_root`."""
    from onnxbuild.schema import BuildConfig

    data = json.loads(json.dumps(manifest["config"]))
    for item in data.get("input", {}).get("inputs", []):  # JSON made the int dim indices strings
        item["dynamic"] = {int(k): v for k, v in (item.get("dynamic") or {}).items()}
    cfg = OmegaConf.merge(OmegaConf.structured(BuildConfig), data)
    cfg.cache.enabled = False
    cfg.cache.root = str(out_root / "cache")
    cfg.release.root = str(out_root / "release")
    return cfg


def environment_differences(manifest: dict[str, Any]) -> list[str]:
    from onnxbuild.fingerprint import git_info, source_digest
    from onnxbuild.versions import platform_info, tool_versions

    lines = []
    recorded, here = manifest.get("versions", {}), tool_versions()
    for name in sorted(set(recorded) | set(here)):
        if recorded.get(name) != here.get(name):
            lines.append(f"{name}: recorded {recorded.get(name)}, here {here.get(name)}")
    for name, value in platform_info().items():
        if manifest.get("platform", {}).get(name) != value:
            lines.append(f"platform.{name}: recorded {manifest.get('platform', {}).get(name)}, here {value}")
    if manifest.get("onnxbuild_source_sha256") not in (None, source_digest()):
        git = git_info() or {}
        lines.append(
            f"onnxbuild source: recorded {manifest['onnxbuild_source_sha256'][:12]} "
            f"(git {(manifest.get('onnxbuild_git') or {}).get('commit')}), here {source_digest()[:12]} "
            f"(git {git.get('commit')})"
        )
    return lines


def input_differences(cfg: DictConfig, manifest: dict[str, Any]) -> list[str]:
    from onnxbuild.fingerprint import input_digests

    recorded, here = manifest.get("inputs", {}), input_digests(cfg)
    return [
        f"input {key} ({(recorded.get(key) or here.get(key) or {}).get('name')}) differs from the recorded one"
        for key in sorted(set(recorded) | set(here))
        if recorded.get(key) != here.get(key)
    ]


def model_code_differences(cfg: DictConfig, manifest: dict[str, Any]) -> list[str]:
    """Local modules of the model factory (or its package version) that changed since the build."""
    from onnxbuild.fingerprint import target_identity

    recorded = manifest.get("model_code")
    if recorded is None:  # a manifest from before model code was recorded
        return []
    here = target_identity(str(cfg.model._target_))
    lines = []
    if recorded.get("distribution") != here.get("distribution"):
        lines.append(f"model code: {recorded.get('distribution')} recorded, {here.get('distribution')} here")
    old, new = recorded.get("local_modules") or {}, here.get("local_modules") or {}
    for module in sorted(set(old) | set(new)):
        if old.get(module) != new.get(module):
            state = "is new" if module not in old else "is gone" if module not in new else "changed"
            lines.append(f"model code: local module {module} {state}")
    return lines


def verify(run_dir: Path, keep: bool = False) -> tuple[bool, list[str]]:
    """(full match, report lines)."""
    from onnxbuild.errors import BuildError
    from onnxbuild.pipeline import run_build

    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        return False, [f"error: {manifest_path} not found (is {run_dir} an onnxbuild run directory?)"]
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    lines: list[str] = []
    ok = True
    if manifest.get("status") != "ok" or not manifest.get("artifacts"):
        return False, [f"error: the run's status is {manifest.get('status')!r}: nothing to verify"]

    out_root = Path(tempfile.mkdtemp(prefix="onnxbuild-verify-"))
    try:
        cfg = recorded_config(manifest, out_root)
        env = environment_differences(manifest)
        inputs = input_differences(cfg, manifest) + model_code_differences(cfg, manifest)
        for line in inputs:
            lines.append(f"MISMATCH {line}")
            ok = False
        rebuilt_dir = out_root / "run"
        rebuilt: dict[str, str] = {}
        try:
            result = run_build(cfg, rebuilt_dir)
            rebuilt = {a["path"]: a["sha256"] for a in result.manifest["artifacts"]}
        except BuildError as exc:
            lines.append(f"REBUILD FAILED {exc.one_line()}")
            ok = False
        for artifact in manifest["artifacts"]:
            name, expected = artifact["path"], artifact["sha256"]
            on_disk = file_sha256(run_dir / name) if (run_dir / name).is_file() else None
            again = rebuilt.get(name)
            problems = []
            if on_disk != expected:
                problems.append(f"file in run dir has {on_disk[:12] if on_disk else 'no file'}")
            if again != expected:
                problems.append(f"rebuild gives {again[:12] if again else 'no file'}")
            if problems:
                ok = False
                lines.append(f"MISMATCH {name}: manifest {expected[:12]}, " + ", ".join(problems))
            else:
                lines.append(f"match    {name}  {expected}")
        if env:
            lines.append("environment differs from the recorded one:")
            lines.extend(f"  {line}" for line in env)
        else:
            lines.append("environment: same tool versions and platform as recorded")
        if keep:
            lines.append(f"rebuild kept in {rebuilt_dir}")
    finally:
        if not keep:
            shutil.rmtree(out_root, ignore_errors=True)
    lines.append("verify: OK, every artifact matches" if ok else "verify: FAILED")
    return ok, lines


QUIET_LOGGERS = ("torch", "onnxscript", "onnx_ir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxbuild.verify", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an onnxbuild run directory (with manifest.json)")
    parser.add_argument("--keep", action="store_true", help="keep the rebuild's temporary directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="no build progress on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    for noisy in QUIET_LOGGERS:  # as in a build (conf/hydra/job_logging/onnxbuild.yaml)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ok, lines = verify(args.run_dir, keep=args.keep)
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

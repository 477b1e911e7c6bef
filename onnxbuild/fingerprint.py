"""Cheap identities of everything a build reads, computed without importing torch or the model.

Cache keys and the manifest need the digest of the onnxbuild code, of input files (checkpoints,
sample inputs) and of the model factory's module; all come from files and package metadata.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild import versions
from onnxbuild.artifacts import file_sha256

PACKAGE_DIR = Path(__file__).resolve().parent
# Config keys that name input files (or directories of them). Values that are null or absent are
# skipped, so keys of optional features can be listed here before every config has them.
INPUT_FILE_KEYS: tuple[str, ...] = ("model.checkpoint", "validation.samples")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over onnxbuild's own Python sources (relative path + bytes): the code version."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any] | None:
    """Commit (and whether the tree is dirty) of the checkout onnxbuild runs from, if it is one."""
    root = PACKAGE_DIR.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "onnxbuild",
                "conf",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def stage_version(module: str) -> int | None:
    """A stage module's VERSION constant, read from its source (importing it could be heavy)."""
    spec = find_module_file(module)
    if spec is None:
        return None
    match = re.search(r"^VERSION\s*=\s*(\d+)", spec.read_text(encoding="utf-8"), re.MULTILINE)
    return int(match.group(1)) if match else None


def find_module_file(module: str) -> Path | None:
    """The source file of a dotted module name, located without executing any package code."""
    parts = module.split(".")
    search: list[str] | None = None
    origin: Path | None = None
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
        if spec.origin and spec.has_location:
            origin = Path(spec.origin)
        else:  # a namespace package: its directory
            origin = Path(search[0]) if search else None
        if i < len(parts) - 1 and not search:
            return None
    return origin


def target_identity(target: str) -> dict[str, Any]:
    """What identifies a model factory's code: its distribution's version and its module's digest.

    Only the module that defines the factory is hashed (not what it imports): code in a pip-installed
    package is covered by the package version, local code by the module file's digest.
    """
    module = target.rpartition(".")[0]
    top = module.split(".")[0]
    identity: dict[str, Any] = {"target": target}
    version = versions.package_version(top) or versions.package_version(top.replace("_", "-"))
    if version is not None:
        identity["distribution"] = f"{top}=={version}"
    if top == "onnxbuild":
        identity["onnxbuild_source"] = source_digest()
        return identity
    path = find_module_file(module)
    if path is not None and path.is_file():
        identity["module_sha256"] = file_sha256(path)
    return identity


def _file_entry(path: Path) -> dict[str, Any]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {
            "name": path.name,
            "files": {p.relative_to(path).as_posix(): file_sha256(p) for p in files},
        }
    return {"name": path.name, "sha256": file_sha256(path)}


def input_files(cfg: DictConfig, prefixes: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Configured input files by config key; restricted to keys under `prefixes` when given."""
    found: dict[str, Path] = {}
    for key in INPUT_FILE_KEYS:
        if prefixes is not None and not any(key == p or key.startswith(p + ".") for p in prefixes):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or value == "":
            continue
        values = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
        for index, item in enumerate(values):
            name = key if len(values) == 1 else f"{key}[{index}]"
            found[name] = Path(str(item)).expanduser()
    return found


@functools.lru_cache(maxsize=64)
def _cached_entry(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    return _file_entry(Path(path))


def input_digests(cfg: DictConfig, prefixes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """sha256 (and file name, never the path) of every configured input file, by config key."""
    digests: dict[str, Any] = {}
    for key, path in input_files(cfg, prefixes).items():
        if not path.exists():
            digests[key] = {"name": path.name, "missing": True}
            continue
        stat = path.stat()
        digests[key] = _cached_entry(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return digests

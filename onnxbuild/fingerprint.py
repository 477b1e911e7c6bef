"""Cheap identities of everything a build reads, computed without importing torch or the model.

Cache keys and the manifest need the digest of the onnxbuild code, of input files (checkpoints,
sample inputs) and of the model factory's module; all come from files and package metadata.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
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


MAX_LOCAL_MODULES = 500  # a bound on the import walk; local model code is rarely that big


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[Path, ...]:
    """Where installed (versioned) code lives: the standard library and site-packages."""
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(Path(r).resolve() for r in roots if r)


def _is_local(path: Path) -> bool:
    """Local code (a checkout, an editable install, PYTHONPATH), not a versioned installed package."""
    resolved = path.resolve()
    if any(part in ("site-packages", "dist-packages") for part in resolved.parts):
        return False
    return not any(resolved.is_relative_to(root) for root in _installed_roots())


def _model_source(name: str, path: Path | None) -> bool:
    """A local .py module that counts as model code: not installed, not onnxbuild's own (which
    source_digest() covers)."""
    if path is None or path.suffix != ".py" or not path.is_file() or not _is_local(path):
        return False
    return not (name.split(".")[0] == "onnxbuild" and path.resolve().is_relative_to(PACKAGE_DIR))


def _imported_modules(path: Path, module: str) -> set[str]:
    """Module names a source file imports (absolute, and relative ones resolved), read by AST.

    A build reads a factory's imports up to four times (capture's and validate's cache keys, the
    run-time module scan, the manifest): parsed once per file version.
    """
    try:
        stat = path.stat()
    except OSError:
        return set()
    return set(_imports_by_stamp(str(path.resolve()), stat.st_size, stat.st_mtime_ns, module))


@functools.lru_cache(maxsize=4096)
def _imports_by_stamp(file: str, size: int, mtime_ns: int, module: str) -> frozenset[str]:
    import ast

    path = Path(file)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                keep = len(base_parts) - (node.level - 1)
                if keep < 0:
                    continue
                base = ".".join(base_parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    # A submodule's parents run first (their __init__.py is code too).
    for name in list(names):
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(n for n in names if n)


def local_module_digests(module: str) -> dict[str, str]:
    """sha256 of the module and of every local module it imports, transitively, by module name.

    A factory's own file is not enough: editing a helper it imports (or an editable install whose
    version does not change) must invalidate the cached capture. Installed packages are left to
    their versions; nothing is imported or executed here.
    """
    digests: dict[str, str] = {}
    pending = [module, *(".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1))]
    seen: set[str] = set()
    while pending and len(digests) < MAX_LOCAL_MODULES:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            path = find_module_file(name)
        except (ImportError, ValueError):
            path = None
        if not _model_source(name, path):
            continue
        digests[name] = file_sha256(path)
        pending.extend(sorted(_imported_modules(path, name) - seen))
    return dict(sorted(digests.items()))


def loaded_local_modules(names: set[str], exclude: set[str]) -> dict[str, str]:
    """sha256 of the local modules among `names` that are loaded (not onnxbuild's, not `exclude`).

    Reading imports misses what a factory imports at run time (`importlib.import_module(name)`, a
    plugin registry): once the model is built those modules are in sys.modules. Their digests go
    with the cached capture and are checked before it is reused (changed_runtime_modules).
    """
    found: dict[str, str] = {}
    for name in sorted(names):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if not file or name in exclude or name == "__main__" or "site-packages" in file:
            continue  # (the string test only skips resolving thousands of installed modules)
        if _model_source(name, Path(file)):
            found[name] = _cached_file_sha256(Path(file))
        if len(found) >= MAX_LOCAL_MODULES:
            break
    return dict(sorted(found.items()))


def changed_runtime_modules(recorded: dict[str, str]) -> list[str]:
    """The recorded run-time modules whose source changed or went away since they were recorded."""
    changed = []
    for name, digest in recorded.items():
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None) if module is not None else None
        path = Path(file) if file else None
        if path is None:
            try:
                path = find_module_file(name)
            except (ImportError, ValueError):
                path = None
        if path is None or not path.is_file() or _cached_file_sha256(path) != digest:
            changed.append(name)
    return changed


def target_identity(target: str) -> dict[str, Any]:
    """What identifies a model factory's code: its distribution's version and its local sources.

    Installed packages are covered by their version; local code (a checkout, PYTHONPATH, an
    editable install) by the digests of the factory's module and every local module it imports.
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
    local = local_module_digests(module) if module else {}
    if local:
        identity["local_modules"] = local
    return identity


def _file_entry(path: Path) -> dict[str, Any]:
    if path.is_dir():
        # Each file by its own stamp: a directory's mtime does not change when a file in it is
        # rewritten in place.
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {
            "name": path.name,
            "files": {p.relative_to(path).as_posix(): _cached_file_sha256(p) for p in files},
        }
    return {"name": path.name, "sha256": _cached_file_sha256(path)}


def _cached_file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256_by_stamp(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_sha256_by_stamp(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


# Config sections whose string values may name files the model is built from (a factory that
# loads its own weights or reads an architecture file; a Hugging Face model directory): any value
# there that is an existing path counts by content, like model.checkpoint.
PATH_SCAN_KEYS: tuple[str, ...] = ("model.kwargs", "model.tokenizer")


def _paths_in(value: Any, key: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        for name, item in value.items():
            found.update(_paths_in(item, f"{key}.{name}"))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found.update(_paths_in(item, f"{key}[{index}]"))
    elif isinstance(value, str) and value and ("/" in value or "." in value):
        path = Path(value).expanduser()
        try:
            # The working directory (or a parent) is never a model file, and would mean hashing
            # every build's outputs: skip it.
            if path.exists() and not (path.is_dir() and Path.cwd().resolve().is_relative_to(path.resolve())):
                found[key] = path
        except OSError:
            pass
    return found


def input_files(cfg: DictConfig, prefixes: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Configured input files by config key; restricted to keys under `prefixes` when given."""
    found: dict[str, Path] = {}
    for key in PATH_SCAN_KEYS:
        if prefixes is not None and not any(key == p or key.startswith(p + ".") for p in prefixes):
            continue
        found.update(_paths_in(OmegaConf.select(cfg, key, default=None), key))
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


def input_digests(cfg: DictConfig, prefixes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """sha256 (and file name, never the path) of every configured input file, by config key."""
    digests: dict[str, Any] = {}
    for key, path in input_files(cfg, prefixes).items():
        if not path.exists():
            digests[key] = {"name": path.name, "missing": True}
            continue
        digests[key] = _file_entry(path)
    return digests

"""Content-addressed stage cache: unchanged work is never redone, and never read half-written.

An entry is keyed by the sha256 of the canonical JSON of everything its stage reads (see
pipeline.stage_key). Layout under the cache root:

    entries/<k[:2]>/<k>/meta.json     stage, key, files (name -> sha256, size), artifact info, warnings
    entries/<k[:2]>/<k>/files/...     the artifact files, by their path relative to the run dir
    entries/<k[:2]>/<k>/stamp.json    size/mtime/inode of each file when its digest was last checked
    locks/<k>.lock                    one file lock per key

Entries are assembled in tmp/ and renamed into place, so a reader sees a whole entry or none.
A stage computes under its key's lock, so concurrent builds compute a key once. Files are hard
links shared with run directories (read-only); a file whose stamp changed is re-hashed, and a
digest mismatch discards the entry so that it is rebuilt.

`python -m onnxbuild.cache [--root DIR] [info|prune|clear]` shows the size and prunes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxbuild.artifacts import canonical_json, file_sha256, text_sha256

log = logging.getLogger("onnxbuild")

DEFAULT_ROOT = "outputs/.cache"
META = "meta.json"
STAMP = "stamp.json"
LAST_USED = "last_used"
FORMAT = 1


def compute_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a stage's inputs."""
    return text_sha256(canonical_json({"cache_format": FORMAT, **parts}))


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def link_or_copy(src: Path, dst: Path) -> None:
    """Place `src` at `dst` atomically: hard link when possible, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@dataclass
class Entry:
    """A complete cache entry."""

    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def info(self) -> dict[str, Any]:
        return self.meta.get("info", {})

    @property
    def primary(self) -> str | None:
        return self.meta.get("primary")

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.meta["files"]

    def file(self, name: str) -> Path:
        return self.path / "files" / name

    def check(self, full: bool = False) -> str | None:
        """None when intact, else what is wrong. Stamps avoid re-hashing unchanged files."""
        stamp_path = self.path / STAMP
        try:
            stamps = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
        except (OSError, ValueError):
            stamps = {}
        changed = False
        for name, expected in self.files.items():
            path = self.file(name)
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != expected["size"]:
                return f"{name} has size {path.stat().st_size}, expected {expected['size']}"
            if not full and stamps.get(name) == _stamp(path):
                continue
            actual = file_sha256(path)
            if actual != expected["sha256"]:
                return f"{name} has sha256 {actual[:12]}, expected {expected['sha256'][:12]}"
            stamps[name] = _stamp(path)
            changed = True
        if changed:
            _write_json_atomic(stamp_path, stamps)
        return None

    def restore(self, run_dir: Path) -> dict[str, Path]:
        """Link the entry's files into the run directory under their recorded names."""
        placed = {}
        for name in self.files:
            target = run_dir / name
            link_or_copy(self.file(name), target)
            placed[name] = target
        with suppress(OSError):
            (self.path / LAST_USED).touch()
        return placed


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(canonical_json(data), encoding="utf-8")
    os.replace(tmp, path)


class StageCache:
    """The cache under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / key

    @contextmanager
    def lock(self, key: str, timeout: float = -1) -> Iterator[None]:
        """Exclusive per-key lock across processes (and threads)."""
        from filelock import FileLock

        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{key}.lock"), timeout=timeout):
            yield

    @contextmanager
    def _maybe_lock(self, key: str, locked: bool) -> Iterator[None]:
        if locked:
            yield
        else:
            with self.lock(key):
                yield

    def get(self, key: str) -> Entry | None:
        """The entry for `key` if it exists and its meta reads; no file checks."""
        path = self.entry_dir(key)
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("key") != key:
            return None
        return Entry(key=key, path=path, meta=meta)

    def lookup(self, key: str, locked: bool = False) -> Entry | None:
        """An intact entry for `key`, or None; a corrupt entry is discarded (under the key's lock).

        `locked`: the caller holds the key's lock already.
        """
        entry = self.get(key)
        if entry is None:
            if self.entry_dir(key).exists():  # a directory without readable meta: corrupt
                with self._maybe_lock(key, locked):
                    if self.get(key) is None:
                        self.discard(key, "unreadable meta.json")
            return None
        problem = entry.check()
        if problem is None:
            return entry
        with self._maybe_lock(key, locked):
            again = self.get(key)  # another process may have rebuilt it meanwhile
            if again is not None and again.meta != entry.meta and again.check() is None:
                return again
            self.discard(key, problem)
        return None

    def discard(self, key: str, reason: str) -> None:
        path = self.entry_dir(key)
        if not path.exists():
            return
        log.warning("cache entry %s discarded (%s): the stage is rebuilt", key[:12], reason)
        trash = self.root / "tmp" / f"discard-{key}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def store(
        self,
        key: str,
        stage: str,
        files: dict[str, Path],
        info: dict[str, Any],
        primary: str | None,
        warnings: list[str] | None = None,
    ) -> Entry:
        """Publish the files and artifact info under `key` (call with the key's lock held)."""
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        (tmp / "files").mkdir(parents=True)
        try:
            described = {}
            stamps = {}
            for name, src in sorted(files.items()):
                dst = tmp / "files" / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
                os.chmod(dst, 0o444)
                described[name] = {"sha256": file_sha256(dst), "size": dst.stat().st_size}
                stamps[name] = _stamp(dst)
            meta = {
                "key": key,
                "stage": stage,
                "primary": primary,
                "files": described,
                "info": info,
                "warnings": list(warnings or []),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / META).write_text(canonical_json(meta), encoding="utf-8")
            (tmp / STAMP).write_text(canonical_json(stamps), encoding="utf-8")
            final = self.entry_dir(key)
            if final.exists():
                self.discard(key, "replaced")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return Entry(key=key, path=final, meta=meta)

    # ---- maintenance -------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        found = []
        for meta in sorted((self.root / "entries").glob(f"*/*/{META}")):
            entry = self.get(meta.parent.name)
            if entry is not None:
                found.append(entry)
        return found

    @staticmethod
    def entry_size(entry: Entry) -> int:
        return sum(f["size"] for f in entry.files.values())

    @staticmethod
    def last_used(entry: Entry) -> float:
        marker = entry.path / LAST_USED
        return (marker if marker.exists() else entry.path / META).stat().st_mtime

    def prune(self, max_bytes: int | None = None, older_than_s: float | None = None) -> list[Entry]:
        """Drop entries unused for `older_than_s`, then least recently used ones above `max_bytes`."""
        now = time.time()
        removed: list[Entry] = []
        entries = sorted(self.entries(), key=self.last_used)
        kept = []
        for entry in entries:
            if older_than_s is not None and now - self.last_used(entry) > older_than_s:
                removed.append(entry)
            else:
                kept.append(entry)
        if max_bytes is not None:
            total = sum(self.entry_size(e) for e in kept)
            while kept and total > max_bytes:
                entry = kept.pop(0)
                total -= self.entry_size(entry)
                removed.append(entry)
        for entry in removed:
            with self.lock(entry.key):
                shutil.rmtree(entry.path, ignore_errors=True)
            (self.root / "locks" / f"{entry.key}.lock").unlink(missing_ok=True)
        stale = time.time() - 24 * 3600
        for leftover in (self.root / "tmp").glob("*") if (self.root / "tmp").exists() else []:
            if leftover.stat().st_mtime < stale:
                shutil.rmtree(leftover, ignore_errors=True)
        return removed


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 20G, 1T)") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"a size is >= 0, got {text!r}")
    return size


def _days_arg(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not days >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"days are >= 0, got {text!r} (a negative age would remove everything)"
        )
    return days


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnxbuild.cache", description="Show or prune the stage cache."
    )
    parser.add_argument("--root", default=os.environ.get("ONNXBUILD_CACHE_DIR", DEFAULT_ROOT))
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="entries and size per stage (default)")
    prune = sub.add_parser("prune", help="remove old or least recently used entries")
    prune.add_argument(
        "--max-size", type=_size_arg, help="keep at most this much, e.g. 10G (least recently used go first)"
    )
    prune.add_argument("--older-than", type=_days_arg, help="remove entries unused for this many days")
    sub.add_parser("clear", help="remove every entry")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        # A typo in --root (or ONNXBUILD_CACHE_DIR) would otherwise report an empty cache.
        parser.error(
            f"no cache at {args.root} (not a directory); builds create it at cache.root on first use"
        )
    cache = StageCache(Path(args.root))
    if args.command == "prune":
        if args.max_size is None and args.older_than is None:
            parser.error("prune needs --max-size and/or --older-than")
        removed = cache.prune(
            max_bytes=args.max_size,
            older_than_s=args.older_than * 86400 if args.older_than is not None else None,
        )
        print(f"removed {len(removed)} entries ({human(sum(cache.entry_size(e) for e in removed))})")
    elif args.command == "clear":
        removed = cache.prune(max_bytes=0)
        print(f"removed {len(removed)} entries ({human(sum(cache.entry_size(e) for e in removed))})")
    entries = cache.entries()
    by_stage: dict[str, list[Entry]] = {}
    for entry in entries:
        by_stage.setdefault(entry.stage, []).append(entry)
    print(
        f"cache {cache.root.resolve()}: {len(entries)} entries, {human(sum(cache.entry_size(e) for e in entries))}"
    )
    for stage, items in sorted(by_stage.items()):
        print(f"  {stage:<12} {len(items):>4} entries  {human(sum(cache.entry_size(e) for e in items)):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

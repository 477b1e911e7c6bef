"""Release builds (`+release=default`): strict settings checked up front, and a release bundle.

The bundle `release/<model>-opset<N>-<shorthash>/` holds model.onnx (+ external data), manifest.json,
validation.json, the resolved config (config.yaml) and a SHA256SUMS over all of them. <shorthash> is
the start of the manifest's sha256, so a bundle's name pins its config, tool versions and outputs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.artifacts import canonical_json, file_sha256, text_sha256
from onnxbuild.errors import ConfigError

HINT = "release builds are strict; drop the override or build without +release=default"


def check_release(cfg: DictConfig) -> None:
    """Refuse release settings that would make the release weaker than the preset promises."""
    rules: list[tuple[bool, str, str]] = [
        (not cfg.cache.enabled, "cache.enabled", "a release is built from scratch: the cache must be off"),
        (bool(cfg.deterministic), "deterministic", "a release runs torch with deterministic algorithms"),
        (
            str(cfg.capture.strategy) != "auto",
            "capture.strategy",
            "a release captures with one named strategy (non_strict), never a silent fallback",
        ),
        (bool(cfg.validation.enabled), "validation.enabled", "a release is always validated"),
        (
            bool(cfg.validation.include_example_shape),
            "validation.include_example_shape",
            "a release is validated at every input set (min, max, example, odd)",
        ),
        (
            bool(cfg.validation.include_odd_shape),
            "validation.include_odd_shape",
            "a release is validated at every input set (min, max, example, odd)",
        ),
        (
            {"normal", "zeros", "large"} <= set(cfg.validation.get("profiles", [])),
            "validation.profiles",
            "a release is validated with every value profile (normal, zeros, large)",
        ),
        (
            bool(cfg.validation.get("require_informative")),
            "validation.require_informative",
            "a release cannot rest on a degenerate (constant) reference",
        ),
        (
            str(cfg.validation.get("random_ops")) == "fail",
            "validation.random_ops",
            "a release graph must be deterministic",
        ),
    ]
    for ok, key, message in rules:
        if not ok:
            raise ConfigError(message, key=key, hint=HINT)


def check_release_tolerance(
    name: str, output_dtype: str, precision: str | None, atol: float, rtol: float, source: str
) -> None:
    """A release may tighten a tolerance, never loosen it past the built-in precision default."""
    from omegaconf import OmegaConf

    from onnxbuild.compare import resolve_tolerance
    from onnxbuild.schema import _precision_tolerances

    builtin = OmegaConf.create({"precision_defaults": _precision_tolerances()})
    base_atol, base_rtol, base_source = resolve_tolerance(name, output_dtype, precision, builtin)
    if atol <= base_atol and rtol <= base_rtol:
        return
    key = source if source.startswith("validation.") else "validation.precision_defaults"
    raise ConfigError(
        f"output '{name}' would be validated at atol {atol:g} / rtol {rtol:g}, looser than the {base_source} "
        f"default {base_atol:g} / {base_rtol:g}",
        key=key,
        hint="a release is validated at the default tolerances or tighter; drop the override, or build "
        "without +release",
    )


def _command_line() -> tuple[str | None, list[str]] | None:
    """(the release preset chosen, the task overrides) under Hydra; None elsewhere (compose API)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.runtime.choices.get("release"), list(hydra_cfg.overrides.task)


def check_release_command_line() -> None:
    """What the preset would silently override, or switch off, is refused by name.

    The preset is applied after the config groups, so `cache=on` would pick the group and then
    lose to the preset without a word; `release.enabled=false` would quietly drop the bundle.
    """
    seen = _command_line()
    if seen is None or seen[0] in (None, "null"):
        return
    for override in seen[1]:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "cache":
            raise ConfigError(
                "a release is built from scratch: the cache group cannot be chosen", key="cache", hint=HINT
            )
        if key == "release.enabled" and override.split("=", 1)[-1].strip().lower() in ("false", "0", "no"):
            raise ConfigError(
                "+release=default always writes a release bundle", key="release.enabled", hint=HINT
            )


def bundle_name(cfg: DictConfig, manifest: dict[str, Any]) -> str:
    short = text_sha256(canonical_json(manifest))[:12]
    return f"{cfg.model.name}-opset{int(cfg.opset)}-{short}"


def write_bundle(cfg: DictConfig, run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Assemble the bundle in a temporary directory and rename it into place."""
    from onnxbuild.pipeline import defining_config

    root = Path(str(cfg.release.root))
    final = root / bundle_name(cfg, manifest)
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        names = [a["path"] for a in manifest["artifacts"]]
        for name in names:
            shutil.copyfile(run_dir / name, tmp / name)
        (tmp / "manifest.json").write_text(canonical_json(manifest), encoding="utf-8")
        shutil.copyfile(run_dir / "validation.json", tmp / "validation.json")
        config_text = OmegaConf.to_yaml(OmegaConf.create(defining_config(cfg)), sort_keys=True)
        (tmp / "config.yaml").write_text(config_text, encoding="utf-8")
        files = sorted([*names, "manifest.json", "validation.json", "config.yaml"])
        sums = "".join(f"{file_sha256(tmp / f)}  {f}\n" for f in files)
        (tmp / "SHA256SUMS").write_text(sums, encoding="utf-8")
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final

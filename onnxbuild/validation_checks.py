"""The `validation` section checked before any work: a typo there must not cost a whole build.

Only what needs no model: policies, profile names, tolerance values and the samples path. Per-output
tolerances are matched against the real output names once they are known (validate stage).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.errors import ConfigError
from onnxbuild.inputs import PROFILES

RANDOM_OPS_POLICIES = ("warn", "fail")
TOLERANCE_KEYS = ("atol", "rtol")


def _check_tolerance(value: Any, key: str) -> None:
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a number, got {value!r}", key=key, hint="e.g. 1e-4") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(
            f"must be a finite number >= 0, got {value}",
            key=key,
            hint="tolerances are error bounds, e.g. 1e-4",
        )


def check_validation_section(section: DictConfig) -> None:
    """Every `validation.*` value that can be checked without the model; raises ConfigError."""
    policy = str(section.random_ops)
    if policy not in RANDOM_OPS_POLICIES:
        raise ConfigError(
            f"unknown random_ops policy '{policy}'", key="validation.random_ops", hint="warn or fail"
        )
    unknown = [p for p in section.profiles if p not in PROFILES]
    if unknown:
        raise ConfigError(
            f"unknown value profile(s) {unknown}",
            key="validation.profiles",
            hint=f"choose from {list(PROFILES)}",
        )
    for name in TOLERANCE_KEYS:
        _check_tolerance(section.get(name), f"validation.{name}")
    for precision, tolerance in (section.get("precision_defaults") or {}).items():
        for name in TOLERANCE_KEYS:
            _check_tolerance(tolerance.get(name), f"validation.precision_defaults.{precision}.{name}")
    for out_name, override in (section.get("outputs") or {}).items():
        plain = OmegaConf.to_container(override) if OmegaConf.is_config(override) else override
        if not isinstance(plain, dict) or set(plain) - set(TOLERANCE_KEYS):
            raise ConfigError(
                f"validation.outputs.{out_name} must be {{atol: ..., rtol: ...}}, got {plain}",
                key=f"validation.outputs.{out_name}",
                hint="e.g. +validation.outputs.logits.atol=1e-3",
            )
        for name in TOLERANCE_KEYS:
            _check_tolerance(plain.get(name), f"validation.outputs.{out_name}.{name}")
    if float(section.large_magnitude) <= 0:
        raise ConfigError(
            f"must be > 0, got {section.large_magnitude}", key="validation.large_magnitude", hint="e.g. 10"
        )
    samples = section.get("samples")
    if samples:
        path = Path(str(samples)).expanduser()
        if not path.exists():
            raise ConfigError(
                f"sample file or directory not found: {path}",
                key="validation.samples",
                hint="give an .npz file (arrays keyed by input name) or a directory of them",
            )


def check_output_overrides(section: DictConfig, output_names: list[str]) -> None:
    """A per-output tolerance for an output the model does not have is a typo, not a no-op."""
    unknown = sorted(set(section.get("outputs") or {}) - set(output_names))
    if unknown:
        raise ConfigError(
            f"tolerances given for unknown output(s) {unknown}",
            key=f"validation.outputs.{unknown[0]}",
            hint=f"the model's outputs are {output_names}",
        )

"""Tool versions from package metadata (no heavy imports), for manifests and cache keys."""

from __future__ import annotations

import functools
import platform
import sys
from importlib import metadata

TRACKED_PACKAGES = (
    "onnxbuild",
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "onnx-ir",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxsim",
    "hydra-core",
    "omegaconf",
    "numpy",
    "safetensors",
    "transformers",
)


@functools.cache
def package_version(name: str) -> str | None:
    """Installed version from package metadata (cached: metadata lookups scan sys.path)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        version = package_version(name)
        if version is not None:
            versions[name] = version
    return versions


def platform_info() -> dict[str, str]:
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "python_implementation": sys.implementation.name,
    }

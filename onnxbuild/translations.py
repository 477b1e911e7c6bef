"""Custom op translations: config entries (torch op name -> onnxscript function import path).

The result is the `custom_translation_table` of torch.onnx.export. Functions are imported only from
an allowlist (like model factories), so a config cannot make the build import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onnxbuild.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

BUILTIN_ALLOWED_PREFIXES: tuple[str, ...] = ("onnxbuild.",)
KEY = "translations"


def resolve_op(name: str, key: str) -> torch._ops.OpOverload:
    """'aten::gelu', 'aten::add.Tensor', 'mylib::myop' or 'torch.ops.aten.gelu.default' -> OpOverload.

    Without an overload the `default` one is used (the exporter registers overloads, not packets).
    """
    import torch

    text = name.strip()
    if text.startswith("torch.ops."):
        parts = text.removeprefix("torch.ops.").split(".")
        namespace, op_name, overload = parts[0], parts[1] if len(parts) > 1 else "", ".".join(parts[2:])
    elif "::" in text:
        namespace, _, rest = text.partition("::")
        op_name, _, overload = rest.partition(".")
    else:
        raise ConfigError(
            f"'{name}' is not a torch op name",
            key=key,
            hint="write namespace::op[.overload] (aten::gelu, mylib::myop) or torch.ops.aten.gelu.default",
        )
    try:
        packet = getattr(getattr(torch.ops, namespace), op_name)
        return getattr(packet, overload or "default")
    except (AttributeError, RuntimeError) as exc:
        raise ConfigError(
            f"torch has no op '{name}' ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            key=key,
            hint="check the spelling; a custom op must be registered (torch.library) by the model's module",
        ) from exc


def resolve_function(path: str, prefixes: list[str], key: str) -> Callable[..., Any]:
    """Import the translation function if its import path is inside the allowlist."""
    if not any(path.startswith(p) for p in prefixes):
        raise ConfigError(
            f"translation function '{path}' is outside the allowlist {prefixes}",
            key=key,
            hint=f"add its package to translations.allowed_prefixes, e.g. [{path.split('.')[0]}.]",
        )
    module_name, _, attr = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"cannot import translation function '{path}': {exc}",
            key=key,
            hint="check the spelling and that the package is installed",
        ) from exc
    from onnxbuild.models import check_origin

    try:
        check_origin(function, path, prefixes, key)
    except ModelError as exc:
        raise ConfigError(exc.message, key=key, hint=exc.hint) from exc
    if not callable(function):
        raise ConfigError(
            f"'{path}' is a {type(function).__name__}, not an onnxscript function",
            key=key,
            hint="point to an onnxscript function (or a plain function calling onnxscript ops)",
        )
    return function


def allowed_prefixes(section: Any) -> list[str]:
    return [*BUILTIN_ALLOWED_PREFIXES, *list(section.get("allowed_prefixes") or [])]


def translation_table(section: Any) -> dict[Any, Callable[..., Any]]:
    """The exporter's custom_translation_table from the `translations` config section."""
    if section is None:
        return {}
    prefixes = allowed_prefixes(section)
    table: dict[Any, Callable[..., Any]] = {}
    for index, entry in enumerate(section.get("table") or []):
        key = f"{KEY}.table[{index}]"
        op = resolve_op(str(entry["op"]), f"{key}.op")
        if op in table:
            raise ConfigError(
                f"op '{entry['op']}' is translated twice", key=f"{key}.op", hint="keep one entry"
            )
        table[op] = resolve_function(str(entry["function"]), prefixes, f"{key}.function")
    return table


def describe(table: dict[Any, Callable[..., Any]]) -> dict[str, str]:
    """op name -> function qualname, for the stage report."""
    return {
        op.name(): f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', type(fn).__name__)}"
        for op, fn in table.items()
    }

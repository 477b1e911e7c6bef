"""Command-line overrides of dynamic dims, which OmegaConf cannot address by their integer keys.

`dynamic` maps a dim index (an int key) to its range, and OmegaConf refuses the string key that
a dotted path gives it: `input.inputs.0.dynamic.0.max=8` fails with "Key 0 (str) is incompatible
with (int)". Before Hydra parses the command line, such an override becomes the dict override that
OmegaConf accepts and that merges into the preset's dims: `++input.inputs.0.dynamic={0:{max:8}}`
(`++` so that a dim the preset does not have can be added too).
A sweep over one field (`...dynamic.0.max=8,16,32`) becomes a sweep over those dicts.
"""

from __future__ import annotations

import re

from onnxbuild.errors import ConfigError

# [+|++]<path ending in .dynamic>.<dim index>.<field>=<value>, or .<dim index>=<{dict}>
_DIM_FIELD = re.compile(
    r"^\+{0,2}(?P<path>(?:[\w-]+\.)*dynamic)\.(?P<dim>\d+)\.(?P<field>name|min|max)=(?P<value>.*)$"
)
_DIM_WHOLE = re.compile(r"^\+{0,2}(?P<path>(?:[\w-]+\.)*dynamic)\.(?P<dim>\d+)=(?P<value>\{.*\})$")
_PLAIN_VALUES = re.compile(r"^[\w.-]+(?:,[\w.-]+)*$")


def rewrite_dynamic_overrides(args: list[str]) -> list[str]:
    """Command-line arguments with every dynamic-dim override in dict form (others unchanged)."""
    fields: dict[str, dict[int, dict[str, str]]] = {}
    whole: dict[str, dict[int, str]] = {}
    first_at: dict[str, int] = {}
    kept: list[str | None] = []
    for arg in args:
        match = _DIM_FIELD.match(arg) or _DIM_WHOLE.match(arg)
        if match is None:
            kept.append(arg)
            continue
        path, dim = match["path"], int(match["dim"])
        first_at.setdefault(path, len(kept))
        kept.append(None)
        if "field" in match.groupdict() and match["field"]:
            value = match["value"]
            if not _PLAIN_VALUES.match(value):
                raise ConfigError(
                    f"cannot read '{arg}': a dynamic dim field takes a value or a comma-separated sweep",
                    key=f"{path}.{dim}.{match['field']}",
                    hint=f"write the dim as a dict: '{path}={{{dim}:{{name:batch,min:1,max:8}}}}'",
                )
            fields.setdefault(path, {}).setdefault(dim, {})[match["field"]] = value
        else:
            whole.setdefault(path, {})[dim] = match["value"][1:-1]
    for path, at in first_at.items():
        # `++`: merge, and allow a dim index the preset does not have yet (struct mode refuses it).
        kept[at] = f"++{path}={','.join(_dict_values(path, fields.get(path, {}), whole.get(path, {})))}"
    return [arg for arg in kept if arg is not None]


def _dict_values(path: str, fields: dict[int, dict[str, str]], whole: dict[int, str]) -> list[str]:
    """One dict per sweep value (a single dict when nothing sweeps)."""
    sweeps = [
        (dim, field) for dim, values in fields.items() for field, value in values.items() if "," in value
    ]
    if len(sweeps) > 1:
        names = ", ".join(f"{path}.{dim}.{field}" for dim, field in sweeps)
        raise ConfigError(
            f"more than one dynamic dim field swept on the command line ({names})",
            key=path,
            hint=f"sweep whole dicts instead: '{path}={{0:{{min:1,max:8}}}},{{0:{{min:2,max:16}}}}'",
        )
    choices = [None]
    if sweeps:
        dim, field = sweeps[0]
        choices = fields[dim][field].split(",")
    out = []
    for choice in choices:
        entries = []
        for dim in sorted({*fields, *whole}):
            parts = [whole[dim]] if dim in whole else []
            for field, value in fields.get(dim, {}).items():
                parts.append(f"{field}:{choice if sweeps and (dim, field) == sweeps[0] else value}")
            entries.append(f"{dim}:{{{','.join(p for p in parts if p)}}}")
        out.append("{" + ",".join(entries) + "}")
    return out

"""Hydra's composition errors as onnxbuild's one-line ConfigError.

Hydra prints a misspelt key, a wrong type or a missing preset on several lines (message, cause,
`full_key:` block, a hint about HYDRA_FULL_ERROR) before any of our code runs. The CLI lets Hydra
raise instead, and this module turns what it raised into `key: message (hint: ...)`.
"""

from __future__ import annotations

import re

from onnxbuild.choices import SCHEMA_NODE
from onnxbuild.errors import ConfigError

KEYS_HINT = "`python -m onnxbuild --cfg job` prints every key and its value"


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _parse_error(text: str) -> str:
    """`Error parsing override '+foo'` + `missing EQUAL at '<EOF>'` on one line, without the doc link."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("See http")]
    return ": ".join(lines[:2])


def _group(missing_cfg_file: str | None) -> str | None:
    if not missing_cfg_file or "/" not in missing_cfg_file:
        return None
    return missing_cfg_file.rpartition("/")[0]


def _raised_by_hydra(exc: BaseException) -> bool:
    """Whether the innermost frame of the exception is inside Hydra (not the build or the model)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and "/hydra/" in last.replace("\\", "/")


def as_config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError for a Hydra / OmegaConf composition error; None for anything else."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(exc, MissingConfigException):
        group = _group(exc.missing_cfg_file)
        options = ", ".join(sorted(o for o in exc.options or [] if o != SCHEMA_NODE))
        hint = f"choose one of: {options}" if options else "check the name of the preset and its group"
        message = _first_line(str(exc)).removeprefix("In 'config': ")
        return ConfigError(message, key=group, hint=hint)
    if isinstance(exc, OverrideParseException):
        return ConfigError(
            f"cannot parse the override: {_parse_error(str(exc))}",
            key=None,
            hint="write key=value (quote values with brackets, commas or spaces: 'key=[1,2]')",
        )
    if isinstance(exc, ValueError) and _raised_by_hydra(exc) and "override" in str(exc).lower():
        # e.g. `=5`: Hydra's override handling raises a plain ValueError.
        return ConfigError(
            f"cannot apply the override: {_first_line(str(exc))}",
            key=None,
            hint="write key=value (quote values with brackets, commas or spaces: 'key=[1,2]')",
        )
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    if not isinstance(cause, (HydraException, OmegaConfBaseException)):
        return None
    key = getattr(cause, "full_key", None) or None
    message = _first_line(str(cause))
    missing = re.search(r"Missing mandatory value: ([\w.\[\]]+)", message)
    if missing:  # met while resolving another key (hydra.run.dir uses model.name): name the missing one
        key = missing.group(1)
        return ConfigError(
            f"missing mandatory value {key}",
            key=key,
            hint=f"set it on the command line ({key}=...); {KEYS_HINT}",
        )
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(
            f"unknown config key: {message}",
            key=key,
            hint=f"check the spelling; {KEYS_HINT}; where the schema allows new keys, add one with +{key}=...",
        )
    if isinstance(cause, ValidationError):
        return ConfigError(message, key=key, hint=f"the schema fixes this key's type; {KEYS_HINT}")
    return ConfigError(message, key=key, hint=KEYS_HINT)

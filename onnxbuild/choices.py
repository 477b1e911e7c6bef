"""Config group choices checked under Hydra: a group's ConfigStore schema is not a preset.

Each group registers its dataclass schema as `<group>/schema` so YAML presets are typed; picking
it on the command line (`device=schema`) would silently build with the schema's defaults.
"""

from __future__ import annotations

from onnxbuild.errors import ConfigError

SCHEMA_NODE = "schema"


def check_group_choices() -> None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    for group, choice in HydraConfig.get().runtime.choices.items():
        if choice == SCHEMA_NODE and not str(group).startswith("hydra"):
            raise ConfigError(
                f"'{SCHEMA_NODE}' is the group's typed schema, not a preset",
                key=str(group),
                hint=f"choose a preset from conf/{group}/ (python -m onnxbuild --help lists them)",
            )

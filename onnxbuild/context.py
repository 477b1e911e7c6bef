"""What every stage may read: the run directory, the input spec, the device, and the eager model.

The eager model is built lazily and at most once per build, so a build whose stages never need it
(or a cached build) does not import torch for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from onnxbuild.inputs import InputSpec

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("onnxbuild")


@dataclass
class Artifact:
    """A stage's output: its file(s) in the run directory, their digest, and the live object.

    `payload`, when set, is what the next stage gets instead of reading `path`: it must give the
    same bytes downstream as the loaded file would (after a cache hit there is only the file).
    """

    path: Path
    digest: str
    payload: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    cfg: DictConfig
    run_dir: Path
    specs: list[InputSpec]
    # Facts stages record for the manifest (capture strategy, init mode, constants...).
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _model: nn.Module | None = None

    @property
    def stage_dir(self) -> Path:
        path = self.run_dir / "stages"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def torch_device(self) -> str:
        device = self.cfg.device
        return f"cuda:{device.index}" if device.name == "cuda" else "cpu"

    def model(self) -> nn.Module:
        """The eager model on the build device, created once (seeded init or checkpoint)."""
        if self._model is None:
            from onnxbuild.init import apply_init, resolve_init_mode
            from onnxbuild.models import build_model

            model = build_model(
                self.cfg.model, seed=int(self.cfg.seed), extra_prefixes=list(self.cfg.allowed_target_prefixes)
            )
            mode = resolve_init_mode(self.cfg.model)
            kept = None
            if mode == "informative" and self.cfg.model.get("init") is None:
                from onnxbuild.init import weights_ignore_the_seed

                kept = weights_ignore_the_seed(self.cfg.model, model, int(self.cfg.seed), self.cfg)
            model = model.to(self.torch_device)
            if kept is not None:
                # The factory loads its own (trained) weights: informative would overwrite them.
                self.facts["model_init"] = {"mode": "default", "reason": kept}
                log.info("model.init: %s", kept)
            else:
                self.facts["model_init"] = apply_init(
                    model, mode, self.specs, int(self.cfg.seed), self.torch_device
                )
            self._model = model
        return self._model

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

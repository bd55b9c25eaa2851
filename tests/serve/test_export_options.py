"""The embedding options through export and serving: each stack reproduces the export or is refused by it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serve.export import export
from serve.probes import probes_for
from tests.conftest import TINY_LLAMA, TWO_SIDES

MAX_SEQ = 64
INSTRUCTION = {"query": "Instruct: {task}\nQuery: {text}"}


def exported(tmp_path, **options):
    from models import DecoderEmbedder

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, **options).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    info = export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=MAX_SEQ)
    return model, info


@pytest.mark.parametrize(
    ("options", "pooling"),
    [({"pooling": "mean"}, "mean"), ({"pooling": "weighted_mean"}, "weightedmean"),
     ({"instructions": INSTRUCTION, "task": "find the answer"}, "lasttoken")],
    ids=["mean", "weighted_mean", "instructions"],
)  # fmt: skip
def test_sentence_transformers_reproduces_the_options_on_the_probes(tmp_path, options, pooling) -> None:
    from sentence_transformers import SentenceTransformer

    model, info = exported(tmp_path, **options)
    assert info["pooling"] == pooling and info["stacks"]["sentence-transformers"]["status"] == "exact"
    texts = list(probes_for({name: side.to_dict() for name, side in model.sides.items()}))
    for side in model.side_names:
        st = SentenceTransformer(str(tmp_path / "out" / info["sides"][side]), device="cpu")
        got = st.encode(texts, convert_to_numpy=True)
        want = model.encode(texts, side, max_length=MAX_SEQ).numpy()
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=side)


def test_an_instruction_is_the_sides_default_prompt_and_stacks_without_prompts_are_refused(tmp_path) -> None:
    _, info = exported(tmp_path, instructions=INSTRUCTION, task="find the answer")
    settings = json.loads((tmp_path / "out" / info["sides"]["query"] / "config_sentence_transformers.json").read_text())
    assert settings["prompts"]["query"] == "Instruct: find the answer\nQuery: "
    assert settings["default_prompt_name"] == "query"
    doc = json.loads((tmp_path / "out" / info["sides"]["doc"] / "config_sentence_transformers.json").read_text())
    assert not any((doc.get("prompts") or {}).values()) and doc.get("default_prompt_name") is None
    assert info["stacks"]["infinity-emb"]["status"] == "refused" and "prompt" in info["stacks"]["infinity-emb"]["why"]
    assert info["stacks"]["vllm"]["status"] == "refused"
    assert "--default-prompt-name" in info["stacks"]["tei"]["how"]


def test_weighted_mean_is_refused_for_stacks_without_that_pooling(tmp_path) -> None:
    _, info = exported(tmp_path, pooling="weighted_mean")
    assert {stack: entry["status"] for stack, entry in info["stacks"].items()} == {
        "our server": "exact", "sentence-transformers": "exact", "infinity-emb": "exact", "tei": "refused",
        "vllm": "refused",
    }  # fmt: skip


def test_a_bidirectional_export_writes_no_folder_a_causal_stack_would_misread(tmp_path) -> None:
    _, info = exported(tmp_path, bidirectional=True, pooling="mean")
    assert not (tmp_path / "out" / "sentence-transformers").exists()
    assert info["sides"] == {"query": None, "doc": None} and info["bidirectional"] is True
    refused = {stack for stack, entry in info["stacks"].items() if entry["status"] == "refused"}
    assert refused == {"sentence-transformers", "infinity-emb", "tei", "vllm"}
    with pytest.raises(ValueError, match="ONNX export of a bidirectional model"):
        export(tmp_path / "checkpoint", tmp_path / "out-onnx", max_seq_length=MAX_SEQ, onnx=True)


@pytest.mark.parametrize(
    "options",
    [{"bidirectional": True, "pooling": "weighted_mean"}, {"instructions": INSTRUCTION, "task": "find the answer"}],
    ids=["bidirectional-weighted-mean", "instructions"],
)
def test_our_server_engine_serves_what_the_checkpoint_encodes(tmp_path, options) -> None:
    from serve.engine import EmbeddingEngine

    model, _ = exported(tmp_path, **options)
    engine = EmbeddingEngine.from_folder(tmp_path / "out", max_length=MAX_SEQ)
    texts = ["what is a cat", "  stocks rose\n", "a longer sentence about the weather in spring"]
    for side in model.side_names:
        rows = [engine.row(side, body) for body in engine.tokenize(texts, side=side)]
        got = torch.stack(engine.run(rows)).numpy()
        np.testing.assert_allclose(got, model.encode(texts, side, max_length=MAX_SEQ).numpy(), atol=1e-5)

"""Delimiters, their initial embeddings, and save/load of the embedder."""

from __future__ import annotations

import json

import pytest
import torch

from models import DecoderEmbedder, parse_sides, truncate_embeddings
from tests.conftest import DECODER_FAMILIES, TINY_LLAMA, TWO_SIDES

TEXTS = ["the cat sat on the mat", "def add(a, b): return a + b", "quarterly results rose"]


def test_delimiters_start_at_the_mean_of_their_spelling(tiny_embedder) -> None:
    tokenizer = tiny_embedder.tokenizer
    table = tiny_embedder.backbone.get_input_embeddings().weight
    close_id = tokenizer.convert_tokens_to_ids("<|/q|>")
    spelled = tokenizer("</query>", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(table[close_id], table[spelled].mean(dim=0))
    open_id = tokenizer.convert_tokens_to_ids("<|q|>")
    assert not torch.equal(table[open_id], table[close_id])


def test_delimiters_are_single_special_tokens(tiny_embedder) -> None:
    ids = tiny_embedder.tokenizer("<|q|>hello<|/q|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tiny_embedder.tokenizer.convert_tokens_to_ids("<|q|>")
    assert ids[-1] == tiny_embedder.tokenizer.convert_tokens_to_ids("<|/q|>")


@pytest.mark.parametrize("shared_weights", [True, False])
def test_save_load_round_trip_keeps_delimiters_and_embeddings(tmp_path, shared_weights: bool) -> None:
    model = DecoderEmbedder.build(
        None, TWO_SIDES, random_config=TINY_LLAMA, shared_weights=shared_weights, projection_dim=16, seed=1
    )
    with torch.no_grad():
        model.log_scale.fill_(3.3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = DecoderEmbedder.from_pretrained(tmp_path / "ckpt")
    for token in ("<|q|>", "<|/q|>", "<|d|>", "<|/d|>"):
        assert loaded.tokenizer.convert_tokens_to_ids(token) == model.tokenizer.convert_tokens_to_ids(token)
    for side in ("query", "doc"):
        torch.testing.assert_close(loaded.encode(TEXTS, side), model.encode(TEXTS, side), atol=1e-6, rtol=0)
    assert loaded.log_scale.item() == pytest.approx(3.3)
    assert loaded.embedding_dim == 16
    saved = json.loads((tmp_path / "ckpt" / "embedder_config.json").read_text())
    assert saved["sides"] == TWO_SIDES and saved["shared_weights"] is shared_weights


def test_separate_weights_diverge_under_training() -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, shared_weights=False, seed=0)
    batch = model.tokenize(TEXTS, "query", max_length=32)
    model(batch["input_ids"], batch["attention_mask"], "query").sum().backward()
    assert model.backbones["query"].get_input_embeddings().weight.grad is not None
    assert model.backbones["doc"].get_input_embeddings().weight.grad is None


def test_mixed_sides_in_one_call_match_separate_calls() -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, shared_weights=False, seed=0)
    texts = TEXTS + TEXTS
    sides = ["query"] * 3 + ["doc"] * 3
    batch = model.tokenize(texts, sides, max_length=32)
    with torch.no_grad():
        mixed = model(batch["input_ids"], batch["attention_mask"], sides)
    torch.testing.assert_close(mixed[:3], model.encode(TEXTS, "query"), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[3:], model.encode(TEXTS, "doc"), atol=1e-5, rtol=0)


def test_temperature_is_clamped(tiny_embedder) -> None:
    with torch.no_grad():
        tiny_embedder.log_scale.fill_(50.0)
    assert tiny_embedder.logit_scale().item() == pytest.approx(1 / tiny_embedder.min_temperature)


def test_bad_sides_and_temperatures_are_named() -> None:
    with pytest.raises(ValueError, match="side 'query': close_token"):
        parse_sides({"query": {"open_token": "<q>"}})
    with pytest.raises(ValueError, match="already used"):
        parse_sides(
            {"a": {"open_token": "<x>", "close_token": "<y>"}, "b": {"open_token": "<x>", "close_token": "<z>"}}
        )
    with pytest.raises(ValueError, match="min_temperature"):
        DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, init_temperature=0.01, min_temperature=0.05)


def test_missing_model_path_is_named(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        DecoderEmbedder.build(str(missing), TWO_SIDES)
    with pytest.raises(FileNotFoundError, match="not an embedder checkpoint"):
        DecoderEmbedder.from_pretrained(tmp_path)


@pytest.mark.parametrize("config", DECODER_FAMILIES, ids=lambda config: config["model_type"])
def test_decoder_families_pool_the_same_under_both_paddings(config) -> None:
    # RoPE models are blind to a constant position shift; GPT-2's absolute positions are what
    # catch left padding fed without mask-derived position ids.
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=config, seed=0)
    alone = torch.cat([model.encode([text], "doc") for text in TEXTS])
    for padding_side in ("right", "left"):
        model.padding_side = padding_side
        torch.testing.assert_close(model.encode(TEXTS, "doc"), alone, atol=1e-5, rtol=0)


def test_matryoshka_dims_are_checked_and_survive_save_load(tmp_path) -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, matryoshka_dims=[16, 4, 8])
    assert model.matryoshka_dims == [4, 8, 16]
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "embedder_config.json").read_text())["matryoshka_dims"] == [4, 8, 16]
    assert DecoderEmbedder.from_pretrained(tmp_path / "m").matryoshka_dims == [4, 8, 16]
    size = model.embedding_dim
    for bad, message in (([size + 1], "outside"), ([0], "outside"), ([4, 4], "repeated"), ([], "non-empty")):
        with pytest.raises(ValueError, match=message):
            DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, matryoshka_dims=bad)


def test_truncate_embeddings_renormalises_the_prefix() -> None:
    vectors = torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    short = truncate_embeddings(vectors, 4)
    assert torch.allclose(short, vectors[:, :4] / vectors[:, :4].norm(dim=-1, keepdim=True))
    assert torch.allclose(short.norm(dim=-1), torch.ones(5))
    assert truncate_embeddings(vectors, None) is vectors
    with pytest.raises(ValueError, match="outside"):
        truncate_embeddings(vectors, 13)

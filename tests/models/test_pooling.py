"""Last-token pooling lands on the closing delimiter under both paddings and under truncation."""

from __future__ import annotations

import pytest
import torch

from models import last_token_positions
from models.pooling import position_ids_from_mask
from models.tokenization import encode_delimited

TEXTS = ["short", "a noticeably longer sentence than the first one", "mid length text"]


def test_last_token_positions_right_and_left_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_positions(right).tolist() == [2, 4, 0]
    assert last_token_positions(left).tolist() == [4, 4, 4]


def test_position_ids_skip_left_padding() -> None:
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert position_ids_from_mask(left).tolist() == [[0, 0, 0, 1, 2]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_closing_delimiter_is_the_pooled_token(tiny_embedder, padding_side: str) -> None:
    tiny_embedder.padding_side = padding_side
    batch = tiny_embedder.tokenize(TEXTS, "query", max_length=64)
    close_id = tiny_embedder.tokenizer.convert_tokens_to_ids("<|/q|>")
    open_id = tiny_embedder.tokenizer.convert_tokens_to_ids("<|q|>")
    positions = last_token_positions(batch["attention_mask"])
    assert batch["input_ids"][torch.arange(len(TEXTS)), positions].tolist() == [close_id] * len(TEXTS)
    first = (batch["attention_mask"] == 1).long().argmax(dim=1)
    assert batch["input_ids"][torch.arange(len(TEXTS)), first].tolist() == [open_id] * len(TEXTS)
    if padding_side == "left":
        assert positions.tolist() == [batch["input_ids"].shape[1] - 1] * len(TEXTS)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_truncation_keeps_the_closing_delimiter(tiny_embedder, padding_side: str) -> None:
    tiny_embedder.padding_side = padding_side
    batch = tiny_embedder.tokenize(["x" * 500, "tiny"], "doc", max_length=10)
    assert batch["input_ids"].shape[1] == 10
    close_id = tiny_embedder.tokenizer.convert_tokens_to_ids("<|/d|>")
    positions = last_token_positions(batch["attention_mask"])
    assert batch["input_ids"][torch.arange(2), positions].tolist() == [close_id, close_id]
    assert int(batch["attention_mask"][0].sum()) == 10


def test_embedding_does_not_depend_on_padding_or_batch(tiny_embedder) -> None:
    alone = torch.cat([tiny_embedder.encode([text], "query") for text in TEXTS])
    tiny_embedder.padding_side = "right"
    right = tiny_embedder.encode(TEXTS, "query", batch_size=3)
    tiny_embedder.padding_side = "left"
    left = tiny_embedder.encode(TEXTS, "query", batch_size=3)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert torch.allclose(right.norm(dim=1), torch.ones(len(TEXTS)))


def test_sides_embed_differently(tiny_embedder) -> None:
    query = tiny_embedder.encode(TEXTS, "query")
    doc = tiny_embedder.encode(TEXTS, "doc")
    assert (query - doc).abs().max() > 1e-3


def test_unknown_side_is_named(tiny_embedder) -> None:
    with pytest.raises(ValueError, match="unknown side 'code'"):
        tiny_embedder.encode(["x"], "code")


def test_max_length_too_small_is_rejected(tiny_embedder) -> None:
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        encode_delimited(tiny_embedder.tokenizer, ["x"], tiny_embedder.sides["query"], max_length=2)

"""Padding-free packing: packed rows give the padded batch's embeddings and gradients, on every family."""

from __future__ import annotations

import pytest
import torch

from models import DecoderEmbedder
from models.packing import block_causal_mask, first_fit_decreasing, pack_rows, tight_capacity
from tests.conftest import DECODER_FAMILIES, TINY_LLAMA, TWO_SIDES

TEXTS = [
    "the cat sat on the mat",
    "def add(a, b): return a + b",
    "quarterly results rose sharply after the merger closed in the third quarter",
    "ok",
    "a bird in the hand is worth two in the bush",
]
# Gemma 3 with a window shorter than the rows: its sliding layers must see the window inside each row.
GEMMA_SLIDING = {
    **next(c for c in DECODER_FAMILIES if c["model_type"] == "gemma3_text"),
    "sliding_window": 4,
    "layer_types": ["sliding_attention", "full_attention"],
}
FAMILIES = [*DECODER_FAMILIES, GEMMA_SLIDING]


def family_id(config: dict) -> str:
    return config["model_type"] + ("-sliding" if "layer_types" in config else "")


def test_first_fit_decreasing_fills_bins_within_capacity() -> None:
    lengths = [5, 9, 3, 7, 2, 12, 1]
    bins = first_fit_decreasing(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert [5] in bins  # longer than the capacity: a bin of its own
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins if b != [5])
    assert bins == [[5], [1, 6], [3, 2], [0, 4]]  # lengths 12 | 9+1 | 7+3 | 5+2
    assert first_fit_decreasing([], 4) == []


def test_a_tight_capacity_packs_into_as_few_narrow_sequences_as_the_limit_allows() -> None:
    assert tight_capacity([15], 256) == 15  # one row: no padding tail
    assert tight_capacity([15] * 8, 256) == 120  # one sequence, as wide as the rows
    lengths = [20, 15, 30, 12] * 8  # 616 tokens: three sequences of <= 256
    capacity = tight_capacity(lengths, 256)
    assert max(lengths) <= capacity <= 256 and len(first_fit_decreasing(lengths, capacity)) <= 4
    assert capacity < 256  # narrower than the limit: the last sequence is not mostly padding
    assert tight_capacity([300, 10], 256) == 300  # never narrower than the longest row
    with pytest.raises(ValueError, match="capacity"):
        tight_capacity([5], 0)


def test_pack_rows_lays_real_tokens_end_to_end_with_restarting_positions() -> None:
    input_ids = torch.tensor([[7, 8, 9, 0], [0, 0, 5, 6], [4, 0, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]])  # mixed padding sides
    packed = pack_rows(input_ids, attention_mask, capacity=6)
    assert packed.input_ids.shape == (1, 6) and packed.real_tokens == 6
    assert packed.input_ids.tolist() == [[7, 8, 9, 5, 6, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert packed.segments.tolist() == [[0, 0, 0, 1, 1, 2]]
    assert packed.input_ids.flatten()[packed.last_index].tolist() == [9, 6, 4]
    two = pack_rows(input_ids, attention_mask, capacity=3)
    assert two.input_ids.shape == (2, 3)
    assert two.input_ids.flatten()[two.last_index].tolist() == [9, 6, 4]
    with pytest.raises(ValueError, match="at least one attended token"):
        pack_rows(input_ids, torch.zeros_like(attention_mask), 4)


def test_block_causal_mask_keeps_rows_apart_and_padding_unmasked() -> None:
    segments = torch.tensor([[0, 0, 1, -1]])
    allowed = block_causal_mask(segments)[0, 0]
    assert allowed.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
    ]
    windowed = block_causal_mask(torch.tensor([[0, 0, 0]]), window=2)[0, 0]
    assert windowed.tolist() == [[True, False, False], [True, True, False], [False, True, True]]


@pytest.mark.parametrize("config", FAMILIES, ids=family_id)
@pytest.mark.parametrize("capacity", [24, 200])  # several packed sequences, and all rows in one
def test_packed_embeddings_equal_padded_embeddings(config: dict, capacity: int) -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=config, seed=0).eval()
    for padding_side in ("right", "left"):
        model.padding_side = padding_side
        batch = model.tokenize(TEXTS, "doc", max_length=24)  # the long text is truncated
        with torch.no_grad():
            padded = model(batch["input_ids"], batch["attention_mask"], "doc")
            packed = model(batch["input_ids"], batch["attention_mask"], "doc", pack_tokens=capacity)
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_sliding_window_layers_get_the_window_inside_each_row() -> None:
    # Without the sliding mask (window off) the packed result departs from the padded one: the
    # equality above is not blind to the window.
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=GEMMA_SLIDING, seed=0).eval()
    batch = model.tokenize(TEXTS, "doc", max_length=24)
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"], "doc")
        model.backbone.config.sliding_window = None
        windowless = model(batch["input_ids"], batch["attention_mask"], "doc", pack_tokens=64)
    assert (windowless - padded).abs().max() > 1e-3


def test_eager_attention_packs_with_an_additive_mask() -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).eval()
    model.backbone.set_attn_implementation("eager")
    batch = model.tokenize(TEXTS, "doc", max_length=24)
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"], "doc")
        packed = model(batch["input_ids"], batch["attention_mask"], "doc", pack_tokens=40)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared_weights", [True, False])
def test_packed_gradients_equal_padded_gradients(shared_weights: bool) -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, shared_weights=shared_weights, seed=0)
    sides = ["query"] * 2 + ["doc"] * 3
    batch = model.tokenize(TEXTS, sides, max_length=24)
    target = torch.randn(len(TEXTS), model.embedding_dim, generator=torch.Generator().manual_seed(0))

    def gradients(pack_tokens: int | None) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        embeddings = model(batch["input_ids"], batch["attention_mask"], sides, pack_tokens=pack_tokens)
        (embeddings * target).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    padded, packed = gradients(None), gradients(30)
    assert padded.keys() == packed.keys() and len(padded) > 10
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=0, msg=name)


def test_truncated_rows_keep_their_closing_delimiter_when_packed(tiny_embedder) -> None:
    batch = tiny_embedder.tokenize(["word " * 100, "short"], "query", max_length=16)
    packed = pack_rows(batch["input_ids"], batch["attention_mask"], capacity=16)
    close_id = tiny_embedder.tokenizer.convert_tokens_to_ids("<|/q|>")
    assert packed.input_ids.flatten()[packed.last_index].tolist() == [close_id, close_id]

"""model.pooling and model.bidirectional: neutral by default, the same vectors padded, packed and reloaded."""

from __future__ import annotations

import pytest
import torch

from models import DecoderEmbedder
from models.pooling import pool, pool_last_token
from tests.conftest import DECODER_FAMILIES, TINY_LLAMA, TWO_SIDES

TEXTS = [
    "the cat sat on the mat",
    "def add(a, b): return a + b",
    "quarterly results rose sharply after the merger closed in the third quarter",
    "ok",
]
OPTIONS = [("mean", False), ("weighted_mean", False), ("last_token", True), ("mean", True)]


def build(config: dict = TINY_LLAMA, **options) -> DecoderEmbedder:
    return DecoderEmbedder.build(None, TWO_SIDES, random_config=config, seed=0, **options).eval()


def test_the_defaults_are_last_token_and_causal_exactly() -> None:
    default, explicit = build(), build(pooling="last_token", bidirectional=False)
    batch = default.tokenize(TEXTS, "doc", max_length=24)
    with torch.no_grad():
        hidden = default.backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        by_hand = torch.nn.functional.normalize(pool_last_token(hidden, batch["attention_mask"]).float(), dim=-1)
        for model in (default, explicit):
            assert torch.equal(model(batch["input_ids"], batch["attention_mask"], "doc"), by_hand)


def test_mean_modes_match_sentence_transformers_formulas_on_right_padding() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    expanded = mask[..., None].float()
    mean = (hidden * expanded).sum(1) / expanded.sum(1)
    positions = torch.arange(1, 5)[None, :, None].float() * expanded  # sentence-transformers' weightedmean
    weighted = (hidden * positions).sum(1) / positions.sum(1)
    torch.testing.assert_close(pool(hidden, mask, "mean"), mean)
    torch.testing.assert_close(pool(hidden, mask, "weighted_mean"), weighted)
    with pytest.raises(ValueError, match="last_token"):
        pool(hidden, mask, "max")


# every option on Llama, both options at once on every other family
CASES = [(TINY_LLAMA, *option) for option in OPTIONS] + [(config, "weighted_mean", True) for config in DECODER_FAMILIES]


@pytest.mark.parametrize(
    ("config", "pooling", "bidirectional"), CASES, ids=lambda v: v["model_type"] if isinstance(v, dict) else str(v)
)
def test_options_embed_alike_padded_left_right_packed_and_one_by_one(
    config: dict, pooling: str, bidirectional: bool
) -> None:
    model = build(config, pooling=pooling, bidirectional=bidirectional)
    alone = torch.cat([model.encode([text], "doc", max_length=24) for text in TEXTS])
    for padding_side in ("right", "left"):
        model.padding_side = padding_side
        batch = model.tokenize(TEXTS, "doc", max_length=24)
        with torch.no_grad():
            padded = model(batch["input_ids"], batch["attention_mask"], "doc")
            packed = model(batch["input_ids"], batch["attention_mask"], "doc", pack_tokens=30)
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(alone, build(config)(**model.tokenize(TEXTS, "doc", 24), side="doc"), atol=1e-3)


def test_bidirectional_lets_the_first_token_see_the_last() -> None:
    ids = build().tokenize(["one two three", "one two four"], "doc", max_length=16)

    def first_token_states(bidirectional: bool) -> torch.Tensor:
        model = build(bidirectional=bidirectional)
        captured = {}

        def keep(module, args, out) -> None:
            captured["h"] = out.last_hidden_state

        hook = model.backbone.register_forward_hook(keep)
        with torch.no_grad():
            model(ids["input_ids"], ids["attention_mask"], "doc")
        hook.remove()
        return captured["h"][:, 1]  # the first body token ("one") of both rows

    causal, both_ways = first_token_states(False), first_token_states(True)
    torch.testing.assert_close(causal[0], causal[1])  # causal: blind to the differing last word
    assert (both_ways[0] - both_ways[1]).abs().max() > 1e-4


@pytest.mark.parametrize(("pooling", "bidirectional"), OPTIONS)
def test_packed_gradients_equal_padded_gradients_with_the_options(pooling: str, bidirectional: bool) -> None:
    model = build(pooling=pooling, bidirectional=bidirectional).train()
    sides = ["query"] * 2 + ["doc"] * 2
    batch = model.tokenize(TEXTS, sides, max_length=24)
    target = torch.randn(len(TEXTS), model.embedding_dim, generator=torch.Generator().manual_seed(0))

    def gradients(pack_tokens: int | None) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (model(batch["input_ids"], batch["attention_mask"], sides, pack_tokens=pack_tokens) * target).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    padded, packed = gradients(None), gradients(30)
    assert padded.keys() == packed.keys()
    for name in padded:  # float rounding grows with the gradient's size (the embedding rows reach ~40 here)
        scale = max(1.0, padded[name].abs().max().item())
        torch.testing.assert_close(packed[name], padded[name], atol=1e-6 * scale, rtol=0, msg=name)


def test_options_survive_save_and_load(tmp_path) -> None:
    model = build(pooling="weighted_mean", bidirectional=True)
    model.save_pretrained(tmp_path)
    loaded = DecoderEmbedder.from_pretrained(tmp_path).eval()
    assert (loaded.pooling, loaded.bidirectional) == ("weighted_mean", True)
    torch.testing.assert_close(loaded.encode(TEXTS, "query"), model.encode(TEXTS, "query"), atol=1e-6, rtol=0)


def test_bad_options_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        build(pooling="cls")
    model = build(bidirectional=True)
    model.backbone.config._attn_implementation = "flash_attention_2"
    batch = model.tokenize(TEXTS, "doc", max_length=24)
    with pytest.raises(ValueError, match="attn_implementation=sdpa"):
        model(batch["input_ids"], batch["attention_mask"], "doc", pack_tokens=30)


INSTRUCTION = "Instruct: {task}\nQuery: {text}"


def test_a_side_instruction_is_its_texts_prefix_and_the_other_side_is_untouched() -> None:
    plain = build()
    instructed = build(instructions={"query": INSTRUCTION}, task="find the answer")
    with torch.no_grad():
        by_hand = plain.encode(["Instruct: find the answer\nQuery: what is a cat"], "query")
        torch.testing.assert_close(instructed.encode(["what is a cat"], "query"), by_hand, atol=0, rtol=0)
        torch.testing.assert_close(
            instructed.encode(["what is a cat"], "query", task="other task"),
            plain.encode(["Instruct: other task\nQuery: what is a cat"], "query"), atol=0, rtol=0,
        )  # fmt: skip
        torch.testing.assert_close(instructed.encode(TEXTS, "doc"), plain.encode(TEXTS, "doc"), atol=0, rtol=0)
    rows = instructed.tokenize(["what is a cat"], "query", max_length=64)  # the training path: the same ids
    by_hand_rows = plain.tokenize(["Instruct: find the answer\nQuery: what is a cat"], "query", 64)
    assert rows["input_ids"].tolist() == by_hand_rows["input_ids"].tolist()


def test_the_prompt_and_text_are_normalised_together_as_sentence_transformers_joins_them() -> None:
    plain = build()
    instructed = build(instructions={"query": " Q: {text}"})
    ids = instructed.tokenize(["  cat \n"], "query", max_length=64)["input_ids"]
    assert ids.tolist() == plain.tokenize(["Q:   cat"], "query", max_length=64)["input_ids"].tolist()


def test_instructions_survive_save_and_load(tmp_path) -> None:
    model = build(instructions={"query": INSTRUCTION}, task="find the answer")
    model.save_pretrained(tmp_path)
    loaded = DecoderEmbedder.from_pretrained(tmp_path)
    assert loaded.sides["query"].prompt() == "Instruct: find the answer\nQuery: " and loaded.sides["doc"].prompt() == ""
    torch.testing.assert_close(loaded.encode(TEXTS, "query"), model.encode(TEXTS, "query"), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("instructions", "task", "message"),
    [({"query": "Query: {text} please"}, None, "ending in {text}"),
     ({"answer": "A: {text}"}, None, "does not have"),
     ({"query": "{task} {task} {text}"}, "t", "more than once")],
)  # fmt: skip
def test_bad_instructions_are_refused_naming_the_side(instructions, task, message) -> None:
    with pytest.raises(ValueError, match=message):
        build(instructions=instructions, task=task)


def test_an_instruction_naming_a_task_needs_one() -> None:
    model = build(instructions={"query": INSTRUCTION})
    with pytest.raises(ValueError, match="no task text"):
        model.encode(["x"], "query")
    assert model.encode(["x"], "query", task="given here").shape == (1, model.embedding_dim)

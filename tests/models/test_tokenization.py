"""One input path: training's tokenize, encode() and the server (strings and token arrays) give the same rows."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from models import DecoderEmbedder, last_token_positions
from models.sides import Side
from models.tokenization import (
    OUTER_WHITESPACE,
    STRIP_NORMALIZER,
    body_ids,
    byte_level_tokenizer,
    delimit_ids,
    delimiter_ids,
    normalize_text,
)
from tests.conftest import TINY_LLAMA, TWO_SIDES

MAX_LENGTH = 16
TEXTS = [
    "short",
    "a text much longer than sixteen tokens, so both paths must cut its body and keep the delimiters",
    "def add(a, b):\n    return a + b",
    "caf\u00e9 \u2014 na\u00efve \U0001f600",
    "twelve bytes",
    "thirteen byte",
]
SIDES = ["query", "doc", "query", "doc", "doc", "query"]
# texts without outer whitespace or special-token text: input normalisation must leave their ids alone
PLAIN = [*TEXTS, "tab\tand  two spaces inside", "line one\nline two", "x"]


def legacy_body_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """``body_ids`` as it was before input normalisation (2026-12-08): the tokenizer's ids, cut."""
    return [ids[: max_length - 2] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


class Recorder:
    """Stands in for the engine's model: records each batch ``run`` pads, then runs the real model."""

    def __init__(self, model: DecoderEmbedder) -> None:
        self.model = model
        self.padding_side = model.padding_side
        self.batches: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: list[str]) -> torch.Tensor:
        self.batches.append((input_ids, attention_mask, list(side)))
        return self.model(input_ids, attention_mask, side)


def assert_server_matches_training(model: DecoderEmbedder, texts: Sequence[str], sides: Sequence[str]) -> None:
    from serve.engine import EmbeddingEngine, length_chunks

    engine = EmbeddingEngine(model, "tiny", max_length=MAX_LENGTH)
    training = model.tokenize(texts, sides, MAX_LENGTH)
    assert training["input_ids"].shape[1] == MAX_LENGTH  # the long text was cut ...
    closing = training["input_ids"][torch.arange(len(texts)), last_token_positions(training["attention_mask"])]
    assert closing.tolist() == [delimiter_ids(model.tokenizer, model.sides[s])[1] for s in sides]  # ... not its end

    text_rows = [engine.row(side, body) for side, body in zip(sides, engine.tokenize(texts), strict=True)]
    # token arrays: the client's own untruncated body ids, sent instead of the strings
    array_bodies = [model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert [engine.row(side, body) for side, body in zip(sides, array_bodies, strict=True)] == text_rows
    for i, row in enumerate(text_rows):
        assert list(row.ids) == training["input_ids"][i][training["attention_mask"][i].bool()].tolist()

    # run() pads each length chunk itself: each padded chunk must be tokenize() of the same texts
    engine.model = Recorder(model)  # type: ignore[assignment]
    vectors = engine.run(text_rows)
    chunks = length_chunks([len(row.ids) for row in text_rows])
    assert len(engine.model.batches) == len(chunks)
    for chunk, (input_ids, attention_mask, chunk_sides) in zip(chunks, engine.model.batches, strict=True):
        expected = model.tokenize([texts[i] for i in chunk], chunk_sides, MAX_LENGTH)
        assert chunk_sides == [sides[i] for i in chunk]
        assert torch.equal(input_ids, expected["input_ids"])
        assert torch.equal(attention_mask, expected["attention_mask"])
    assert any((mask == 0).any() for _, mask, _ in engine.model.batches)  # some chunk was padded
    with torch.no_grad():
        reference = model(training["input_ids"], training["attention_mask"], list(sides))  # (B, D)
    torch.testing.assert_close(torch.stack(vectors), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_server_rows_are_training_rows(tiny_embedder, padding_side: str) -> None:
    tiny_embedder.padding_side = padding_side
    assert_server_matches_training(tiny_embedder, TEXTS, SIDES)


def test_a_left_truncating_tokenizer_still_keeps_the_front(tiny_embedder) -> None:
    tiny_embedder.tokenizer.truncation_side = "left"
    batch = tiny_embedder.tokenize([TEXTS[1]], "doc", MAX_LENGTH)
    body = tiny_embedder.tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"][: MAX_LENGTH - 2]
    assert batch["input_ids"][0, 1:-1].tolist() == body
    assert_server_matches_training(tiny_embedder, TEXTS, SIDES)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_encode_equals_forward_on_tokenize_under_truncation(tiny_embedder, padding_side: str) -> None:
    tiny_embedder.padding_side = padding_side
    batch = tiny_embedder.tokenize(TEXTS, "doc", MAX_LENGTH)
    with torch.no_grad():
        expected = tiny_embedder(batch["input_ids"], batch["attention_mask"], "doc")
    encoded = tiny_embedder.encode(TEXTS, "doc", batch_size=2, max_length=MAX_LENGTH)
    torch.testing.assert_close(encoded, expected, atol=1e-5, rtol=0)


def test_texts_without_outer_whitespace_keep_their_ids_and_vectors(tiny_embedder) -> None:
    tokenizer = tiny_embedder.tokenizer
    legacy = legacy_body_ids(tokenizer, PLAIN, MAX_LENGTH)
    assert body_ids(tokenizer, PLAIN, MAX_LENGTH) == legacy
    open_id, close_id = delimiter_ids(tokenizer, tiny_embedder.sides["doc"])
    encoded = tiny_embedder.encode(PLAIN, "doc", batch_size=1, max_length=MAX_LENGTH)
    with torch.no_grad():
        for i, body in enumerate(legacy):
            row = torch.tensor([delimit_ids(body, open_id, close_id, MAX_LENGTH)])
            assert torch.equal(encoded[i], tiny_embedder(row, torch.ones_like(row), "doc")[0])  # bit for bit


def test_outer_whitespace_is_stripped_and_inner_whitespace_kept(tiny_embedder) -> None:
    tokenizer = tiny_embedder.tokenizer
    bare = body_ids(tokenizer, ["hello world"])[0]
    padded = [f"{ch}hello world{ch}{ch}" for ch in OUTER_WHITESPACE] + ["\n\n hello world \r\n"]
    assert body_ids(tokenizer, padded) == [bare] * len(padded)
    assert body_ids(tokenizer, ["hello\n world"]) != [bare]
    batch = tiny_embedder.tokenize(["  short\n", "short"], "doc", MAX_LENGTH)  # training's rows alike
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])


def test_outer_whitespace_is_what_python_strips() -> None:
    assert set(OUTER_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_the_tokenizers_strip_normalizer_is_normalize_text() -> None:
    import json

    from tokenizers import Tokenizer

    spec = json.loads(byte_level_tokenizer().backend_tokenizer.to_str())
    spec["normalizer"] = STRIP_NORMALIZER
    normalizer = Tokenizer.from_str(json.dumps(spec)).normalizer
    texts = [f"{a}x{b}" for a in OUTER_WHITESPACE for b in OUTER_WHITESPACE[::-1]]
    texts += ["a\nb", "a\n\nb\n", "\n a \n b \n", "   ", "", "x\u3000", "\x1cx\x1f", "é \u200b", "\u200bx\ufeff"]
    assert [normalizer.normalize_str(text) for text in texts] == [normalize_text(text) for text in texts]


def test_special_token_text_is_plain_text(tiny_embedder) -> None:
    tokenizer = tiny_embedder.tokenizer
    texts = ["a<|endoftext|>b", "<|q|> spelled out <|/d|>"]
    special = {
        tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|q|>", "<|/q|>", "<|d|>", "<|/d|>")
    }
    bodies = body_ids(tokenizer, texts)
    assert [len(body) for body in bodies] == [len(text.encode()) for text in texts]  # no merges: one id per byte
    assert not special & {token for body in bodies for token in body}
    row = tiny_embedder.tokenize(texts[1:], "query", MAX_LENGTH)["input_ids"][0].tolist()
    assert (row[0], row[-1]) == delimiter_ids(tokenizer, tiny_embedder.sides["query"])  # ours still added, by id


def test_body_ids_leave_no_truncation_on_the_tokenizer(tiny_embedder, tmp_path) -> None:
    import json

    body_ids(tiny_embedder.tokenizer, [TEXTS[1]], 8)
    assert tiny_embedder.tokenizer.backend_tokenizer.truncation is None
    tiny_embedder.tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["truncation"] is None


def test_missing_delimiters_are_named() -> None:
    with pytest.raises(ValueError, match=r"side 'query': delimiters \['<\|q\|>', '<\|/q\|>'\] are not in the tok"):
        delimiter_ids(byte_level_tokenizer(), Side("query", "<|q|>", "<|/q|>"))


@pytest.mark.integration
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_server_rows_are_training_rows_with_the_smollm2_tokenizer(padding_side: str) -> None:
    # The real tokenizer with a tiny random backbone: the ids are what is tested, not the weights.
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from models import parse_sides
    from models.backbone import OFFLINE_ALIASES, cache_root, locate_packaged_gguf
    from models.embedder import add_delimiters

    converted = cache_root() / "models" / "smollm2-135m"
    if (converted / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(converted)
    else:
        gguf = locate_packaged_gguf(OFFLINE_ALIASES["smollm2-135m"])
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fields = {key: value for key, value in TINY_LLAMA.items() if key != "model_type"}
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model("llama", vocab_size=len(tokenizer), **fields))
    sides = parse_sides(TWO_SIDES)
    add_delimiters(backbone, tokenizer, list(sides.values()))
    model = DecoderEmbedder(backbone, tokenizer, sides, padding_side=padding_side)
    assert_server_matches_training(model, TEXTS, SIDES)


@pytest.mark.integration
def test_smollm2_plain_texts_keep_their_ids_and_outer_whitespace_goes() -> None:
    from transformers import AutoTokenizer

    from models.backbone import cache_root

    converted = cache_root() / "models" / "smollm2-135m"
    if not (converted / "tokenizer_config.json").is_file():
        pytest.skip(f"{converted} not converted yet (load smollm2-135m once)")
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert body_ids(tokenizer, PLAIN, 512) == legacy_body_ids(tokenizer, PLAIN, 512)
    assert body_ids(tokenizer, [" a document\n", "\ta document  "]) == body_ids(tokenizer, ["a document"]) * 2
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert eos not in body_ids(tokenizer, ["before <|endoftext|> after"])[0]

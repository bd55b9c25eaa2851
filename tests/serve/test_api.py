"""The /v1/embeddings contract in process: input forms, dimensions, encodings, usage, and every error."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from serve.app import Settings, create_app
from serve.engine import EmbeddingEngine
from serve.schemas import MAX_ITEMS, MAX_TOKENS_PER_ITEM, MAX_TOKENS_PER_REQUEST
from tests.serve.conftest import MAX_LENGTH, NAME, run_with_client

OVER_BUDGET = [[5] * MAX_TOKENS_PER_ITEM] * (MAX_TOKENS_PER_REQUEST // MAX_TOKENS_PER_ITEM + 1)
TEXTS = ["a query about sorting lists", "def sort(xs): return sorted(xs)", "x"]


def post(app, payload=None, **kwargs):
    async def body(client):
        if payload is None:
            return await client.post("/v1/embeddings", **kwargs)
        return await client.post("/v1/embeddings", json=payload, **kwargs)

    return run_with_client(app, body)


@pytest.fixture(scope="module")
def app(engine):
    return create_app(Settings(), engine=engine)


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    assert all(item["object"] == "embedding" for item in data)
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def expected(engine, texts, side) -> np.ndarray:
    return engine.model.encode(texts, side, max_length=MAX_LENGTH).numpy()


def assert_error(response, status: int, code: str | None, param: str | None = "input", type_="invalid_request_error"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize("side", ["query", "doc"])
def test_string_and_list_match_the_model(app, engine, side):
    one = post(app, {"input": TEXTS[0], "model": f"{NAME}-{side}"})
    many = post(app, {"input": TEXTS, "model": f"{NAME}-{side}"})
    want = expected(engine, TEXTS, side)
    np.testing.assert_allclose(vectors(one)[0], want[0], atol=1e-5)
    np.testing.assert_allclose(vectors(many), want, atol=1e-5)
    body = many.json()
    assert body["object"] == "list" and body["model"] == f"{NAME}-{side}"


def test_sides_differ(app):
    query = vectors(post(app, {"input": TEXTS[0], "model": f"{NAME}-query"}))
    doc = vectors(post(app, {"input": TEXTS[0], "model": f"{NAME}-doc"}))
    assert np.abs(query - doc).max() > 1e-3


def test_token_arrays_equal_their_text(app, engine):
    ids = engine.tokenize(TEXTS)
    single = post(app, {"input": ids[0], "model": f"{NAME}-query"})
    nested = post(app, {"input": ids, "model": f"{NAME}-query"})
    want = expected(engine, TEXTS, "query")
    np.testing.assert_allclose(vectors(single)[0], want[0], atol=1e-5)
    np.testing.assert_allclose(vectors(nested), want, atol=1e-5)


def test_usage_counts_tokens_plus_two_delimiters(app, engine):
    response = post(app, {"input": TEXTS, "model": f"{NAME}-doc"})
    tokens = sum(len(ids) + 2 for ids in engine.tokenize(TEXTS))
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_long_input_is_truncated_like_the_model(app, engine):
    text = "word " * 200
    response = post(app, {"input": text, "model": f"{NAME}-doc"})
    assert response.json()["usage"]["prompt_tokens"] == MAX_LENGTH
    np.testing.assert_allclose(vectors(response)[0], expected(engine, [text], "doc")[0], atol=1e-5)


def test_dimensions_truncate_and_renormalise(app, engine):
    response = post(app, {"input": TEXTS, "model": f"{NAME}-query", "dimensions": 8})
    got = vectors(response)
    full = expected(engine, TEXTS, "query")[:, :8]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    same = vectors(post(app, {"input": TEXTS, "model": f"{NAME}-query", "dimensions": engine.embedding_dim}))
    np.testing.assert_allclose(same, expected(engine, TEXTS, "query"), atol=1e-5)


def test_base64_is_little_endian_float32_of_the_float_result(app):
    payload = {"input": TEXTS, "model": f"{NAME}-query"}
    floats = vectors(post(app, payload))
    encoded = post(app, {**payload, "encoding_format": "base64"}).json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded])
    np.testing.assert_array_equal(decoded, floats)


def test_user_is_accepted(app):
    assert post(app, {"input": "hi", "model": f"{NAME}-query", "user": "someone"}).status_code == 200


def test_single_side_tower_answers_to_plain_name(one_side_engine):
    app = create_app(Settings(), engine=one_side_engine)
    plain = vectors(post(app, {"input": TEXTS, "model": NAME}))
    text = vectors(post(app, {"input": TEXTS, "model": f"{NAME}-text"}))
    np.testing.assert_array_equal(plain, text)
    np.testing.assert_allclose(plain, expected(one_side_engine, TEXTS, "text"), atol=1e-5)


def test_two_side_tower_has_no_plain_name(app):
    assert_error(post(app, {"input": "hi", "model": NAME}), 404, "model_not_found", "model")


def test_models_and_health(app, engine):
    async def body(client):
        return await client.get("/v1/models"), await client.get("/health")

    models, health = run_with_client(app, body)
    assert [m["id"] for m in models.json()["data"]] == [f"{NAME}-doc", f"{NAME}-query"]
    assert {m["dimensions"] for m in models.json()["data"]} == {engine.embedding_dim}
    assert {m["matryoshka_dimensions"] for m in models.json()["data"]} == {None}
    assert health.json() == {"status": "ok", "models": [f"{NAME}-doc", f"{NAME}-query"]}


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        ({"input": "", "model": "tiny-query"}, 400, "empty_input", "input"),
        ({"input": ["ok", ""], "model": "tiny-query"}, 400, "empty_input", "input"),
        ({"input": [], "model": "tiny-query"}, 400, "empty_input", "input"),
        ({"input": [[1, 2], []], "model": "tiny-query"}, 400, "empty_input", "input"),
        ({"input": ["x"] * (MAX_ITEMS + 1), "model": "tiny-query"}, 400, "too_many_items", "input"),
        ({"input": [5] * (MAX_TOKENS_PER_ITEM + 1), "model": "tiny-query"}, 400, "context_length_exceeded", "input"),
        ({"input": "a" * (MAX_TOKENS_PER_ITEM + 1), "model": "tiny-query"}, 400, "context_length_exceeded", "input"),
        (
            {"input": OVER_BUDGET, "model": "tiny-query"},
            400,
            "max_tokens_per_request",
            "input",
        ),
        ({"input": [[1, -1]], "model": "tiny-query"}, 400, "invalid_token_id", "input"),
        ({"input": [10**9], "model": "tiny-query"}, 400, "invalid_token_id", "input"),
        ({"input": "hi", "model": "nope"}, 404, "model_not_found", "model"),
        ({"input": "hi", "model": "tiny-query", "dimensions": 0}, 400, "invalid_value", "dimensions"),
        ({"input": "hi", "model": "tiny-query", "dimensions": 33}, 400, "invalid_value", "dimensions"),
        ({"input": "hi", "model": "tiny-query", "encoding_format": "int8"}, 400, "invalid_value", "encoding_format"),
        ({"input": "hi"}, 400, "invalid_value", "model"),
        ({"model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": 5, "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": ["a", 1], "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": [1.5], "model": "tiny-query"}, 400, "invalid_value", "input"),
        # strict integers, as OpenAI: no floats, booleans or numeric strings for token ids and dimensions
        ({"input": [1.0], "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": [True], "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": [[False]], "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": [1, "2"], "model": "tiny-query"}, 400, "invalid_value", "input"),
        ({"input": "hi", "model": "tiny-query", "dimensions": 2.0}, 400, "invalid_value", "dimensions"),
        ({"input": "hi", "model": "tiny-query", "dimensions": "8"}, 400, "invalid_value", "dimensions"),
        ({"input": "hi", "model": "tiny-query", "dimensions": True}, 400, "invalid_value", "dimensions"),
    ],
    ids=lambda value: None if isinstance(value, dict) else str(value),
)
def test_invalid_requests(app, payload, status, code, param):
    assert_error(post(app, payload), status, code, param)


@pytest.mark.parametrize("text", ['"a\\ud800b"', '["ok", "\\udfff"]'], ids=["lone-high", "lone-low-in-list"])
def test_lone_surrogate_is_a_400(app, text):
    raw = f'{{"input": {text}, "model": "tiny-query"}}'.encode()
    response = post(app, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_value", "input")


class RefusingEngine(EmbeddingEngine):
    """The tiny engine with a tokenizer that refuses every text, as a fast tokenizer refuses what it cannot encode."""

    def tokenize(self, texts):
        raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")


def test_text_the_tokenizer_refuses_is_a_400(engine):
    refusing = RefusingEngine(engine.model, NAME, max_length=MAX_LENGTH)
    response = post(create_app(Settings(), engine=refusing), {"input": ["fine", "text"], "model": f"{NAME}-doc"})
    assert_error(response, 400, "invalid_text", "input")
    assert "TextEncodeInput" not in response.json()["error"]["message"]  # the tokenizer's internals stay in the log


def test_malformed_json(app):
    response = post(app, content=b'{"input": "hi", "model": ', headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json", None)


def test_unknown_route_has_openai_body(app):
    response = run_with_client(app, lambda client: client.get("/v1/nothing"))
    assert_error(response, 404, "not_found", None)


def test_api_key(engine):
    app = create_app(Settings(api_key="s3cret"), engine=engine)
    payload = {"input": "hi", "model": f"{NAME}-query"}
    assert_error(post(app, payload), 401, "invalid_api_key", None, "authentication_error")
    wrong = post(app, payload, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "invalid_api_key", None, "authentication_error")
    assert post(app, payload, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert run_with_client(app, lambda client: client.get("/health")).status_code == 200
    models = run_with_client(app, lambda client: client.get("/v1/models"))
    assert_error(models, 401, "invalid_api_key", None, "authentication_error")


def test_overload_answers_429(engine):
    app = create_app(Settings(max_queued_rows=2), engine=engine)
    response = post(app, {"input": ["a", "b", "c"], "model": f"{NAME}-query"})
    assert_error(response, 429, "overloaded", None, "service_unavailable")


def test_cli_flags_and_missing_key_env(monkeypatch):
    from serve.__main__ import main, parse_args

    args = parse_args(["--model", "m", "--max-batch-tokens", "99", "--max-wait-ms", "2.5", "--api-key-env", "K"])
    assert (args.model, args.max_batch_tokens, args.max_wait_ms, args.api_key_env) == ("m", 99, 2.5, "K")
    from serve import DEFAULT_RETURN_WAIT_MS

    assert parse_args(["--model", "m"]).return_wait_ms == DEFAULT_RETURN_WAIT_MS == Settings().return_wait_ms
    assert parse_args(["--model", "m", "--return-wait-ms", "0"]).return_wait_ms == 0.0
    assert parse_args(["--model", "m", "--return-wait-tokens", "4096"]).return_wait_tokens == 4096
    monkeypatch.delenv("CPT_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(SystemExit, match="CPT_TEST_NO_SUCH_KEY"):
        main(["--model", "m", "--api-key-env", "CPT_TEST_NO_SUCH_KEY"])


def test_micro_batches_are_packed_by_default_else_the_call_overhead_is_measured_unless_given(monkeypatch):
    from serve.__main__ import parse_args
    from tests.serve.conftest import build_engine

    assert parse_args(["--model", "m"]).call_overhead_tokens == 0.0  # padding alone decides, as before the option
    assert parse_args(["--model", "m", "--call-overhead-tokens", "auto"]).call_overhead_tokens is None
    assert parse_args(["--model", "m", "--call-overhead-tokens", "64"]).call_overhead_tokens == 64.0
    engine = build_engine()
    measured = []
    monkeypatch.setattr(engine, "measure_call_overhead", lambda: measured.append(1) or 12.5)

    def health(client):
        return client.get("/health")

    run_with_client(create_app(Settings(call_overhead_tokens=None, pack_tokens=None), engine=engine), health)
    assert measured == [1]
    run_with_client(create_app(Settings(call_overhead_tokens=30.0, pack_tokens=None), engine=engine), health)
    assert measured == [1] and engine.call_overhead_tokens == 30.0
    assert engine.pack_tokens is None
    from serve import DEFAULT_PACK_TOKENS

    assert parse_args(["--model", "m"]).pack_tokens == DEFAULT_PACK_TOKENS
    run_with_client(create_app(Settings(call_overhead_tokens=None), engine=engine), health)
    assert measured == [1] and engine.pack_tokens == DEFAULT_PACK_TOKENS  # packed micro-batches need no chunk cost


def test_create_app_needs_a_model():
    with pytest.raises(ValueError, match="settings.model"):
        create_app(Settings())


def test_models_list_the_matryoshka_sizes_a_model_was_trained_for(tmp_path):
    from models import DecoderEmbedder
    from serve.engine import EmbeddingEngine
    from tests.conftest import TINY_LLAMA

    sides = {"text": {"open_token": "<|t|>", "close_token": "<|/t|>"}}
    model = DecoderEmbedder.build(None, sides, random_config=TINY_LLAMA, seed=0, matryoshka_dims=[8, 16, 32])
    model.save_pretrained(tmp_path / "ckpt")
    app = create_app(Settings(), engine=EmbeddingEngine.from_folder(tmp_path / "ckpt", name="m", max_length=32))
    card = run_with_client(app, lambda client: client.get("/v1/models")).json()["data"][0]
    assert card["dimensions"] == 32 and card["matryoshka_dimensions"] == [8, 16, 32]
    short = vectors(post(app, {"input": TEXTS, "model": "m", "dimensions": 8}))
    full = model.encode(TEXTS, "text", max_length=32)
    np.testing.assert_allclose(short, torch.nn.functional.normalize(full[:, :8], dim=-1).numpy(), atol=1e-5)


def test_bf16_serving_matches_the_model_under_the_same_autocast():
    from tests.serve.conftest import build_engine

    bf16 = build_engine(precision="bf16")
    got = vectors(post(create_app(Settings(), engine=bf16), {"input": TEXTS, "model": f"{NAME}-doc"}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = expected(bf16, TEXTS, "doc")
    fp32 = expected(build_engine(), TEXTS, "doc")
    np.testing.assert_allclose(got, want, atol=1e-2)
    assert np.abs(got - fp32).max() > 1e-5  # autocast really ran: bf16 rounding shows
    assert (got * fp32).sum(axis=1).min() > 0.99


@pytest.mark.parametrize("pack_tokens", [None, 256])
def test_bf16_engine_runs_on_cast_weights_with_autocasts_vectors_exactly(pack_tokens):
    from tests.serve.conftest import build_engine

    bf16 = build_engine(precision="bf16")
    assert {m.weight.dtype for m in bf16.model.modules() if isinstance(m, torch.nn.Linear)} == {torch.bfloat16}
    reference = build_engine()  # fp32 weights, run under the same autocast
    reference.precision = "bf16"
    bf16.pack_tokens = reference.pack_tokens = pack_tokens
    rows = [bf16.row("doc", body) for body in bf16.tokenize(TEXTS)]
    assert all(torch.equal(a, b) for a, b in zip(bf16.run(rows), reference.run(rows), strict=True))


def test_unknown_precision_is_refused():
    from serve.__main__ import parse_args
    from tests.serve.conftest import build_engine

    with pytest.raises(ValueError, match="precision"):
        build_engine(precision="fp16")
    assert parse_args(["--model", "m", "--precision", "bf16"]).precision == "bf16"


def test_text_certainly_over_a_limit_is_refused_before_it_is_tokenized(engine, monkeypatch):
    app = create_app(Settings(), engine=engine)
    calls = []
    monkeypatch.setattr(engine, "tokenize", lambda *a, **k: calls.append(1) or [[5]])
    huge = "a" * (MAX_TOKENS_PER_ITEM * engine.max_chars_per_token + 1)
    assert_error(post(app, {"input": huge, "model": f"{NAME}-doc"}), 400, "context_length_exceeded")
    many = ["b" * (MAX_TOKENS_PER_ITEM * engine.max_chars_per_token)] * (
        MAX_TOKENS_PER_REQUEST // MAX_TOKENS_PER_ITEM + 1
    )
    assert_error(post(app, {"input": many, "model": f"{NAME}-doc"}), 400, "max_tokens_per_request")
    assert calls == []


def test_a_request_over_the_token_limit_stops_tokenizing_early(engine):
    from itertools import accumulate

    from serve.engine import TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS, character_chunks

    text = " ".join(["sorting"] * 187)  # 1.5 KB: 2048 of them pass the character bound, not the 300,000 tokens
    bodies = engine.tokenize([text] * MAX_ITEMS, stop_after_tokens=MAX_TOKENS_PER_REQUEST)
    chunk_ends = set(accumulate(map(len, character_chunks([text] * MAX_ITEMS, TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS))))
    assert len(bodies) < MAX_ITEMS and len(bodies) in chunk_ends
    assert sum(map(len, bodies)) > MAX_TOKENS_PER_REQUEST
    response = post(create_app(Settings(), engine=engine), {"input": [text] * MAX_ITEMS, "model": f"{NAME}-doc"})
    assert_error(response, 400, "max_tokens_per_request")
    assert "at least" in response.json()["error"]["message"]


def test_threads_tokenize_at_once_with_the_same_ids(engine):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"{word} number {i}" for i, word in enumerate(TEXTS * 200)]
    want = engine.tokenize(texts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: engine.tokenize(texts), range(16)))
    assert all(result == want for result in results)


def test_the_batcher_learns_each_request_s_connection():
    from tests.serve.conftest import build_engine

    app = create_app(Settings(), engine=build_engine())

    async def body(client):
        seen = []
        submit = app.state.batcher.submit
        app.state.batcher.submit = lambda rows, client=None: seen.append(client) or submit(rows, client=client)
        response = await client.post("/v1/embeddings", json={"input": "hello", "model": f"{NAME}-query"})
        return response.status_code, seen

    status, seen = run_with_client(app, body)
    assert status == 200 and seen == [("127.0.0.1", 123)]  # httpx's ASGITransport's client address

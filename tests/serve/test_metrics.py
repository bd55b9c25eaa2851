"""Operations: /metrics counts what was answered (guard refusals too) and the access log has one JSON line each."""

from __future__ import annotations

import json
import logging

from tests.serve.conftest import NAME, run_with_client


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_metrics_and_access_log_cover_answers_and_refusals(engine, caplog):
    from serve.app import Settings, create_app

    app = create_app(Settings(api_key="secret", max_body_bytes=4096), engine=engine)
    auth = {"Authorization": "Bearer secret"}

    async def body(client):
        ok = await client.post("/v1/embeddings", headers=auth, json={"model": f"{NAME}-doc", "input": ["a b", "c"]})
        assert ok.status_code == 200
        tokens = ok.json()["usage"]["prompt_tokens"]
        assert (await client.post("/v1/embeddings", json={"model": f"{NAME}-doc", "input": "x"})).status_code == 401
        too_big = await client.post("/v1/embeddings", headers=auth, content=b"x" * 5000)
        assert too_big.status_code == 413
        unknown = await client.post("/v1/embeddings", headers=auth, json={"model": "nope", "input": "x"})
        assert unknown.status_code == 404
        assert (await client.get("/no/such/route", headers=auth)).status_code == 404
        metrics = await client.get("/metrics", headers=auth)  # behind the key, as every route but /health
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        return tokens, metrics.text

    with caplog.at_level(logging.INFO, logger="serve.access"):
        tokens, text = run_with_client(app, body)
    route = "/v1/embeddings"
    for status, count in (("200", 1), ("401", 1), ("413", 1), ("404", 1)):
        assert sample(text, "cpt_requests_total", route=route, status=status) == count
    assert sample(text, "cpt_requests_total", route="other", status="404") == 1  # stray URLs share one label
    assert sample(text, "cpt_embedding_inputs_total", model=f"{NAME}-doc") == 2
    assert sample(text, "cpt_embedding_tokens_total", model=f"{NAME}-doc") == tokens
    assert sample(text, "cpt_batch_rows_count") >= 1 and sample(text, "cpt_batch_rows_sum") == 2
    assert sample(text, "cpt_request_seconds_count", route=route) == 4
    assert sample(text, "cpt_queued_rows") == 0
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access"]
    assert [line["status"] for line in lines] == [200, 401, 413, 404, 404, 200]  # the last: /metrics itself
    assert lines[0]["model"] == f"{NAME}-doc" and lines[0]["inputs"] == 2 and lines[0]["tokens"] == tokens
    assert all(line["ms"] >= 0 and line["method"] in ("GET", "POST") for line in lines)

"""What happens before the app parses a body: the API key first, then the body's size and the time it may take.

The requests here are raw ASGI calls, so a test sees whether (and how far) the server read the body.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from serve.app import Settings, create_app
from serve.schemas import MAX_BODY_BYTES, MAX_TOKENS_PER_ITEM, MAX_TOKENS_PER_REQUEST
from tests.serve.conftest import NAME, run_with_client

PAYLOAD = json.dumps({"input": "hi", "model": f"{NAME}-query"}).encode()


class Body:
    """An ASGI ``receive`` that hands out ``chunks`` (the last with ``more_body`` unless ``complete``), then stalls."""

    def __init__(self, *chunks: bytes, complete: bool = True) -> None:
        self.chunks = list(chunks)
        self.complete = complete
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or not self.complete}
        await asyncio.Event().wait()  # a client that sends nothing more
        raise AssertionError("unreachable")


def call(app, receive: Body, headers: dict[str, str], path: str = "/v1/embeddings") -> tuple[int, dict, dict]:
    """POST through ``app`` as uvicorn would, with its lifespan around it: (status, headers, JSON body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), 30)

    asyncio.run(main())
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], response_headers, json.loads(body)


def json_headers(length: int | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


def assert_error(status: int, body: dict, want_status: int, code: str, type_: str = "invalid_request_error") -> None:
    assert status == want_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code)


@pytest.fixture(scope="module")
def locked(engine):
    return create_app(Settings(api_key="s3cret"), engine=engine)


# ---- the API key comes first ------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic czNjcmV0"])
def test_the_key_is_checked_before_a_50_mb_body_is_read(locked, authorization):
    body = Body(b"x" * 1024, complete=False)
    headers = json_headers(50_000_000)
    if authorization:
        headers["authorization"] = authorization
    status, response_headers, error = call(locked, body, headers)
    assert_error(status, error, 401, "invalid_api_key", "authentication_error")
    assert body.calls == 0  # not one byte of the body was read
    assert response_headers["www-authenticate"] == "Bearer"
    assert response_headers["connection"] == "close"  # rather than drain 50 MB to keep the connection


def test_malformed_json_without_a_key_is_401_and_with_the_key_400(locked):
    malformed = b'{"input": "hi", "model": '
    for headers, status, code in [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer nope"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer s3cret"}, 400, "invalid_json"),
    ]:
        response = run_with_client(
            locked,
            lambda client, h=headers: client.post(
                "/v1/embeddings", content=malformed, headers={"content-type": "application/json", **h}
            ),
        )
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code


def test_the_key_guards_every_v1_route_but_not_health(locked):
    status, _, error = call(locked, Body(b""), {}, path="/v1/anything")
    assert_error(status, error, 401, "invalid_api_key", "authentication_error")
    assert run_with_client(locked, lambda client: client.get("/health")).status_code == 200
    ok = call(locked, Body(PAYLOAD), {**json_headers(len(PAYLOAD)), "authorization": "Bearer s3cret"})
    assert ok[0] == 200


# ---- the body's size ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(engine):
    return create_app(Settings(max_body_bytes=len(PAYLOAD)), engine=engine)


def test_a_declared_length_over_the_limit_is_413_unread(small):
    body = Body(PAYLOAD + b" ", complete=False)
    status, headers, error = call(small, body, json_headers(len(PAYLOAD) + 1))
    assert_error(status, error, 413, "request_too_large")
    assert str(len(PAYLOAD)) in error["error"]["message"]
    assert body.calls == 0
    assert headers["connection"] == "close"


def test_a_body_without_length_is_cut_off_at_the_limit(small):
    body = Body(PAYLOAD[:10], PAYLOAD[10:], b" ", b"never read", complete=False)  # chunked: no content-length
    status, headers, error = call(small, body, json_headers(None))
    assert_error(status, error, 413, "request_too_large")
    assert body.calls == 3  # read up to the first byte past the limit, no further
    assert headers["connection"] == "close"


def test_a_body_at_the_limit_is_served(small):
    assert call(small, Body(PAYLOAD[:7], PAYLOAD[7:]), json_headers(len(PAYLOAD)))[0] == 200


def test_the_default_limit_admits_the_largest_valid_requests():
    assert Settings().max_body_bytes == MAX_BODY_BYTES
    # 300,000 token ids of a 152k-token vocabulary (Qwen-sized, 6 digits each), as the openai client writes them
    ids = [[151_935] * MAX_TOKENS_PER_ITEM] * (MAX_TOKENS_PER_REQUEST // MAX_TOKENS_PER_ITEM)
    assert len(json.dumps({"input": ids, "model": "m"})) < MAX_BODY_BYTES
    # 300,000 tokens of text at 16.25 bytes per token, the most measured (runs of 64 spaces, SmolLM2's tokenizer)
    assert MAX_TOKENS_PER_REQUEST * 16.25 < MAX_BODY_BYTES


def test_limits_are_checked_in_settings():
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(Settings(max_body_bytes=0, model="m"))
    with pytest.raises(ValueError, match="body_timeout_s"):
        create_app(Settings(body_timeout_s=0, model="m"))


# ---- the body's time ----------------------------------------------------------------------------


def test_a_body_that_stops_arriving_is_408(engine):
    app = create_app(Settings(body_timeout_s=0.3), engine=engine)
    body = Body(PAYLOAD[:10], complete=False)
    started = time.monotonic()
    status, headers, error = call(app, body, json_headers(len(PAYLOAD)))
    assert_error(status, error, 408, "request_timeout")
    assert time.monotonic() - started < 10
    assert headers["connection"] == "close"


def test_cli_sets_the_body_and_shutdown_bounds(monkeypatch):
    import uvicorn

    from serve.__main__ import main
    from serve.lifecycle import GracefulServer

    seen: dict = {}
    monkeypatch.setattr(GracefulServer, "run", lambda self: seen.update(config=self.config, app=self.drained_app))
    main(["--model", "m", "--max-body-bytes", "1000", "--body-timeout-s", "7", "--graceful-shutdown-s", "3",
          "--header-timeout-s", "4"])  # fmt: skip
    settings = seen["app"].state.settings
    assert (settings.max_body_bytes, settings.body_timeout_s, settings.graceful_shutdown_s) == (1000, 7, 3)
    assert settings.header_timeout_s == 4
    assert isinstance(seen["config"], uvicorn.Config) and seen["config"].timeout_graceful_shutdown == 3

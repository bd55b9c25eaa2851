"""The OpenAPI document describes the server as it answers: statuses, error body, limits, security, 405's Allow."""

from __future__ import annotations

import pytest

from serve.app import Settings, create_app
from serve.schemas import MAX_ITEMS, MAX_TOKENS_PER_ITEM
from tests.serve.conftest import run_with_client

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def document(app, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = run_with_client(app, lambda client: client.get("/openapi.json", headers=headers))
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def open_doc(engine):
    return document(create_app(Settings(), engine=engine))


@pytest.fixture(scope="module")
def locked_doc(engine):
    return document(create_app(Settings(api_key="k"), engine=engine), key="k")  # behind the key too


def responses(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]["responses"]


def test_every_status_the_server_answers_is_documented_with_the_error_body(open_doc):
    embeddings = responses(open_doc, "/v1/embeddings", "post")
    assert set(embeddings) == {"200", "400", "404", "408", "413", "429", "500", "503"}
    assert set(responses(open_doc, "/v1/models", "get")) == {"200", "408", "413", "500", "503"}
    for path, method in [("/v1/embeddings", "post"), ("/v1/models", "get")]:
        for status, response in responses(open_doc, path, method).items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (path, status)
    health = responses(open_doc, "/health", "get")
    assert health["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    error = open_doc["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]


def test_no_422_and_no_fastapi_validation_model(open_doc, locked_doc):
    for doc in (open_doc, locked_doc):
        assert all("422" not in op["responses"] for item in doc["paths"].values() for op in item.values())
        assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])


def test_bearer_auth_is_declared_only_when_a_key_is_set(open_doc, locked_doc):
    assert "securitySchemes" not in open_doc.get("components", {})
    assert all("security" not in op for item in open_doc["paths"].values() for op in item.values())
    assert locked_doc["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    for path, method in [("/v1/embeddings", "post"), ("/v1/models", "get")]:
        assert locked_doc["paths"][path][method]["security"] == [{"HTTPBearer": []}]
        assert responses(locked_doc, path, method)["401"]["content"]["application/json"]["schema"] == ERROR_REF
    assert "security" not in locked_doc["paths"]["/health"]["get"]


def test_the_limits_are_in_the_request_schema(open_doc, engine):
    request = open_doc["components"]["schemas"]["EmbeddingRequest"]
    text, texts, tokens, token_arrays = request["properties"]["input"]["oneOf"]
    assert text == {"type": "string", "minLength": 1}
    assert (texts["minItems"], texts["maxItems"], texts["items"]) == (1, MAX_ITEMS, text)
    token_id = {"type": "integer", "minimum": 0, "maximum": engine.vocab_size - 1}
    assert (tokens["minItems"], tokens["maxItems"], tokens["items"]) == (1, MAX_TOKENS_PER_ITEM, token_id)
    assert (token_arrays["minItems"], token_arrays["maxItems"], token_arrays["items"]) == (1, MAX_ITEMS, tokens)
    dimensions = request["properties"]["dimensions"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": engine.embedding_dim} in dimensions
    assert request["required"] == ["input", "model"]


def test_the_document_before_the_model_is_loaded_has_no_model_bounds_and_is_not_kept(tmp_path):
    app = create_app(Settings(model=str(tmp_path / "not-loaded")))
    first = app.openapi()  # no lifespan: the server is still starting
    dimensions = first["components"]["schemas"]["EmbeddingRequest"]["properties"]["dimensions"]["anyOf"]
    assert {"type": "integer", "minimum": 1} in dimensions
    assert app.openapi_schema is None


@pytest.mark.parametrize(("method", "path", "allow"), [("GET", "/v1/embeddings", "POST"), ("DELETE", "/health", "GET")])
def test_405_names_the_allowed_methods(engine, method, path, allow):
    app = create_app(Settings(), engine=engine)
    response = run_with_client(app, lambda client: client.request(method, path))
    assert response.status_code == 405
    assert allow in response.headers["allow"]
    assert response.json()["error"]["code"] == "method_not_allowed"

"""Schemathesis against the app in process: every check, a fixed seed and a small, fixed number of examples.

Every built-in check is on (no server error; statuses, content types, headers and bodies as the
OpenAPI document says; schema-valid data accepted, schema-invalid data refused; a missing key
refused; unsupported methods answered 405 with ``Allow``), on the tiny query/doc tower, without a
key and with one. The schemas load when the module is imported (schemathesis starts each app's
lifespan then): its lazy ``from_fixture`` loader does not run under pytest 9.

One deliberate difference from JSON Schema: there ``2.0`` is an integer, and schemathesis sends
whole floats for integers in its schema-valid cases; OpenAI's API and this server take only JSON
integers (``2``), which JSON Schema cannot say. Those cases are sent with the integer spelling.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from serve.app import Settings, create_app
from tests.serve.conftest import build_engine

KEY = "s3cret"
SETTINGS = {
    "seed": 20250101,
    "generation": {"max-examples": 10, "deterministic": True, "database": "none"},
    "checks": {"enabled": True},
}
ENGINE = build_engine()


def load(settings: Settings, **config) -> schemathesis.BaseSchema:
    """The app's OpenAPI document, loaded through the app itself, with :data:`SETTINGS` and ``config``."""
    app = create_app(settings, engine=ENGINE)
    project = schemathesis.Config.from_dict({**SETTINGS, **config})
    # with a key the document is behind it too
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=project, headers=config.get("headers", {}))


without_key = load(Settings())
with_key = load(Settings(api_key=KEY), headers={"Authorization": f"Bearer {KEY}"})


def integers_spelled_as_integers(value: Any) -> Any:
    """``value`` with every whole float (``2.0``) written as the integer it is (``2``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integers_spelled_as_integers(item) for item in value]
    if isinstance(value, dict):
        return {key: integers_spelled_as_integers(item) for key, item in value.items()}
    return value


def call_and_validate(case: schemathesis.Case) -> None:
    if case.meta is not None and case.meta.generation.mode.is_positive:
        case.body = integers_spelled_as_integers(case.body)
    case.call_and_validate()


@without_key.parametrize()
def test_without_a_key(case):
    call_and_validate(case)


@with_key.parametrize()
def test_with_a_key(case):
    call_and_validate(case)

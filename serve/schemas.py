"""Request and response models of the OpenAI-compatible API, and the request limits (declared here only).

The limits follow OpenAI's ``POST /v1/embeddings`` contract: at most :data:`MAX_ITEMS` inputs, each
at most :data:`MAX_TOKENS_PER_ITEM` tokens, at most :data:`MAX_TOKENS_PER_REQUEST` tokens in all.
Token counts are of the input as sent (the text's tokens, or the token array's length), before
the server adds a side's two delimiters.

Types are strict, as OpenAI's: token ids and ``dimensions`` are JSON integers (not ``1.0``,
``true`` or ``"8"``), texts are JSON strings of valid Unicode (no lone surrogate). The content
limits (no empty input, the counts) are enforced by the route, with their own error codes; the
models only write them into the JSON schema, so the OpenAPI document states what the route checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictInt, StrictStr, Tag

MAX_ITEMS = 2048
MAX_TOKENS_PER_ITEM = 8192
MAX_TOKENS_PER_REQUEST = 300_000
# Bytes of request JSON one token may take: generous, since runs of spaces measured 16.25 bytes per
# token in SmolLM2's tokenizer (prose ~3.2, code ~3.7, \u-escaped CJK ~3.6; docs/serving_measurements.md has the
# command), and a token id of a 152k vocabulary takes 7 ("151935,"). The body limit is what 300,000
# such tokens take.
MAX_BYTES_PER_TOKEN = 32
MAX_BODY_BYTES = MAX_TOKENS_PER_REQUEST * MAX_BYTES_PER_TOKEN  # 9.6 MB


def valid_unicode(text: str) -> str:
    """Refuse a text that is not valid Unicode: JSON's ``\\ud800`` escape gives a lone surrogate, which no
    tokenizer (and no UTF-8 encoder) takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text holds a lone surrogate at character {exc.start}; send valid Unicode") from None
    return text


def _documented(**keywords: Any) -> Any:
    """JSON Schema keywords for the OpenAPI document only (the route enforces them with its own codes)."""
    return Field(json_schema_extra=keywords)


Text = Annotated[StrictStr, AfterValidator(valid_unicode), _documented(minLength=1)]
TokenId = Annotated[StrictInt, _documented(minimum=0)]  # the maximum is the served model's (see served_limits)
TokenArray = Annotated[list[TokenId], _documented(minItems=1, maxItems=MAX_TOKENS_PER_ITEM)]


def input_form(value: Any) -> str | None:
    """Which of the four forms of ``input`` a value has, judged by its first item (``None``: none of them).

    Choosing the form first makes a bad item fail with that form's error (``input.tokens.1: Input
    should be a valid integer``) instead of one error per form of the union.
    """
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    if isinstance(first, str):
        return "texts"
    if isinstance(first, list):
        return "token_arrays"
    return "tokens"


EmbeddingInput = Annotated[
    Annotated[Text, Tag("text")]
    | Annotated[list[Text], Tag("texts"), _documented(minItems=1, maxItems=MAX_ITEMS)]
    | Annotated[TokenArray, Tag("tokens")]
    | Annotated[list[TokenArray], Tag("token_arrays"), _documented(minItems=1, maxItems=MAX_ITEMS)],
    Discriminator(
        input_form,
        custom_error_type="input_form",
        custom_error_message="input must be a string, an array of strings, an array of token ids "
        "or an array of arrays of token ids",
    ),
]


class EmbeddingRequest(BaseModel):
    """Body of ``POST /v1/embeddings``; content limits (empty string, counts) are checked by the route."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: EmbeddingInput = Field(
        description=f"at most {MAX_ITEMS} items of at most {MAX_TOKENS_PER_ITEM} tokens each, "
        f"at most {MAX_TOKENS_PER_REQUEST} tokens in all"
    )
    model: StrictStr
    dimensions: Annotated[StrictInt, _documented(minimum=1)] | None = Field(
        default=None, description="return the first N dimensions, re-normalised; at most the model's size"
    )
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """OpenAI's model object, plus the vector size and the ``dimensions`` the model was trained for.

    ``matryoshka_dimensions`` lists the prefix sizes of Matryoshka training (``null``: none): any
    ``dimensions`` is served, but only these (and the full size) keep the model's quality.
    """

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cpt-embeddings"
    dimensions: int | None = None
    matryoshka_dimensions: list[int] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "starting", "stopping"]
    models: list[str] = Field(default_factory=list)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error answer, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


def served_limits(document: dict[str, Any], embedding_dim: int, vocab_size: int) -> None:
    """Write the served model's bounds into an OpenAPI document made from these models, in place:
    ``dimensions`` at most ``embedding_dim``, token ids below ``vocab_size``."""
    request = document["components"]["schemas"]["EmbeddingRequest"]["properties"]
    for schema in _integer_schemas(request["dimensions"]):
        schema["maximum"] = embedding_dim
    for schema in _integer_schemas(request["input"]):  # every integer of ``input`` is a token id
        schema["maximum"] = vocab_size - 1


def _integer_schemas(schema: Any) -> list[dict[str, Any]]:
    """Every ``{"type": "integer"}`` schema inside ``schema``."""
    if isinstance(schema, list):
        return [found for item in schema for found in _integer_schemas(item)]
    if not isinstance(schema, dict):
        return []
    here = [schema] if schema.get("type") == "integer" else []
    return here + [found for value in schema.values() for found in _integer_schemas(value)]

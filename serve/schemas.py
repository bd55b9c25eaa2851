"""Request and response models of the OpenAI-compatible API, and the request limits (declared here only).

The limits follow OpenAI's ``POST /v1/embeddings`` contract: at most :data:`MAX_ITEMS` inputs, each
at most :data:`MAX_TOKENS_PER_ITEM` tokens, at most :data:`MAX_TOKENS_PER_REQUEST` tokens in all.
Token counts are of the input as sent (the text's tokens, or the token array's length), before
the server adds a side's two delimiters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ITEMS = 2048
MAX_TOKENS_PER_ITEM = 8192
MAX_TOKENS_PER_REQUEST = 300_000

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    """Body of ``POST /v1/embeddings``; content limits (empty string, counts) are checked by the route."""

    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput
    model: str
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


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

"""Embedding models over pretrained decoders: sides and delimiters, pooling, loading, persistence.

Knows nothing of training, evaluation or serving.
"""

from models.backbone import OFFLINE_ALIASES, load_backbone, resolve_pretrained
from models.embedder import (
    DecoderEmbedder,
    add_delimiters,
    check_matryoshka_dims,
    length_batches,
    truncate_embeddings,
)
from models.pooling import last_token_positions, pool_last_token
from models.sides import Side, parse_sides

__all__ = [
    "OFFLINE_ALIASES",
    "DecoderEmbedder",
    "Side",
    "add_delimiters",
    "check_matryoshka_dims",
    "last_token_positions",
    "length_batches",
    "load_backbone",
    "parse_sides",
    "pool_last_token",
    "resolve_pretrained",
    "truncate_embeddings",
]

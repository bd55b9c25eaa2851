"""Serving: an OpenAI-compatible ``/v1/embeddings`` server with micro-batching, and export to sentence-transformers.

``python -m serve --model FOLDER`` runs the server; ``python -m serve.export CHECKPOINT OUT``
exports. Imports nothing from ``train/`` or ``eval/``. ``Settings`` and ``create_app`` are
imported lazily so the CLIs' ``--help`` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app"]

# Tokens per packed sequence when the server runs a micro-batch padding-free (--pack-tokens). An engine probe of
# 8- and 32-row STS-B micro-batches (run beside a data build, so a direction only) had 128 / 256 / 512 within noise.
DEFAULT_PACK_TOKENS = 256
# How long a micro-batch may wait for keep-alive clients it has just answered (serve.batching.ReturningClients).
DEFAULT_RETURN_WAIT_MS = 50.0
# ... while the micro-batch has fewer real tokens than this: on 2 CPU cores a packed forward call still gained per
# token up to ~500-700 real tokens (docs/serving_measurements.md); on a GPU, where far larger batches gain, raise
# it further.
DEFAULT_RETURN_WAIT_TOKENS = 512


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")

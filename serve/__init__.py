"""Serving: an OpenAI-compatible ``/v1/embeddings`` server with micro-batching, and export to sentence-transformers.

``python -m serve --model FOLDER`` runs the server; ``python -m serve.export CHECKPOINT OUT``
exports. Imports nothing from ``train/`` or ``eval/``.
"""

from serve.app import Settings, create_app

__all__ = ["Settings", "create_app"]

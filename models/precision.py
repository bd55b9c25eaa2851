"""Inference precision: the names ``fp32`` / ``bf16`` and the autocast context each one means."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

PRECISIONS = ("fp32", "bf16")


def inference_autocast(precision: str, device: Any = "cpu") -> AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device``'s type (name or ``torch.device``) for ``bf16``; nothing for fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

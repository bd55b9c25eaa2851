"""Precision: whether this machine computes bf16 natively (the one place that decides it, for training's
``mixed_precision=auto`` and the benchmarks alike), the inference names ``fp32`` / ``bf16``, the autocast context
each one means, and the weight cast an inference-only model can do once instead of autocast doing it on every call."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

PRECISIONS = ("fp32", "bf16")


def native_bf16() -> bool:
    """Whether the device this process computes on does bf16 matmuls in hardware: a CUDA GPU that supports
    them, or a CPU with AVX512-BF16 or AMX. Decided from the hardware's flags, not from a timing (a cold
    first bf16 matmul also builds oneDNN's kernels and can look 50x slow). Emulated bf16 is far slower
    than fp32 (~100x for a matmul on an AVX2-only CPU)."""
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is None for probe in probes):  # a torch without the probes: read the CPU flags
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return any(probe() for probe in probes if probe is not None)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def inference_autocast(precision: str, device: Any = "cpu") -> AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device``'s type (name or ``torch.device``) for ``bf16``; nothing for fp32."""
    import torch

    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def cast_autocast_weights(model: Any, precision: str) -> int:
    """Cast, once and in place, the ``nn.Linear`` weights that bf16 autocast would cast on every call; returns how
    many tensors were cast.

    Autocast runs a linear layer as ``linear(x.bf16(), weight.bf16(), bias.bf16())``. Its weight cache lasts one
    autocast region, so a server that enters one per forward call re-reads the fp32 weights and writes their bf16
    copies each time: for a single short row that is a tenth of the call on a 2-core CPU, and an 8B decoder keeps
    32 GB of fp32 weights for 16 GB of bf16 ones. With the weights already bf16 the same call runs on them
    unchanged, so the vectors are bit-identical to autocast's; layers autocast keeps in fp32 (embeddings, norms)
    are left alone, and so is a linear weight shared with one of them (a tied embedding). Only for inference
    under :func:`inference_autocast`: the model no longer runs outside it. ``fp32`` casts nothing.
    """
    import torch

    check_precision(precision)
    if precision == "fp32":
        return 0
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    linear_ids = {id(module) for module in linears}
    shared = {
        id(parameter)
        for module in model.modules()
        if id(module) not in linear_ids
        for parameter in module.parameters(recurse=False)
    }
    cast = 0
    for module in linears:
        for parameter in module.parameters(recurse=False):
            if id(parameter) in shared or parameter.dtype != torch.float32:
                continue
            parameter.data = parameter.data.to(torch.bfloat16)
            cast += 1
    return cast

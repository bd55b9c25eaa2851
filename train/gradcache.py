"""GradCache: a large contrastive batch in memory-bounded chunks, with the same update as one pass.

Steps (as in Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", arXiv:2101.06983):

1. Embed the batch chunk by chunk without an autograd graph, remembering each chunk's RNG state.
2. Compute the loss on the full batch of (detached) embeddings (gathered across processes) and
   its gradients with respect to each embedding and to the temperature.
3. Re-run each chunk with a graph under its remembered RNG state (so dropout matches) and
   backpropagate the cached embedding gradients into the weights.

Peak activation memory then depends on the chunk size, not on the batch size, so the pool of
in-batch negatives can grow without more memory (gradient accumulation cannot do this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from train.losses import ContrastiveLoss, loss_inputs


class RandState:
    """The CPU (and CUDA) RNG state at construction, restorable inside a ``with`` block."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.cuda else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def gradcache_backward(
    model: torch.nn.Module,
    embedder: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    sides: Sequence[str],
    chunk_size: int,
    loss_weight: float,
    loss: ContrastiveLoss,
    no_sync: Callable[[], AbstractContextManager],
    autocast: Callable[[], AbstractContextManager],
    sync_last: bool,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    pack_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulate into ``.grad`` the gradients of ``loss_weight * loss`` for one micro-batch.

    Args:
        model: the (possibly DDP-wrapped) embedder, used for the replayed chunks.
        embedder: the unwrapped embedder (holds ``log_scale``), used for the graph-free pass.
        batch: a micro-batch as :func:`train.losses.loss_inputs` reads it: ``input_ids``, ``attention_mask``
            (2B + M, T) (B x-rows, B y-rows, M hard negatives), the keys (B,).
        sides: the side of each row.
        chunk_size: rows per forward pass; loss_weight: 1 / accumulation steps.
        loss: the contrastive loss (gathers across processes itself).
        no_sync: context that skips the gradient all-reduce (DDP), for every chunk but the last when ``sync_last``.
        autocast: mixed-precision context; sync_last: whether the last chunk's backward all-reduces gradients.
        backward: runs a backward pass (``accelerator.backward``, which applies fp16 loss scaling).
        pack_tokens: pack each chunk's rows padding-free into sequences of this many tokens (None: padded).

    Returns: the loss's terms, detached.
    """
    device = embedder.log_scale.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    chunks = [slice(start, start + chunk_size) for start in range(0, input_ids.shape[0], chunk_size)]

    # Step (1): embeddings without a graph; remember the RNG state before each chunk.
    states, pieces = [], []
    with torch.no_grad(), autocast():
        for rows in chunks:
            states.append(RandState())
            pieces.append(embedder(input_ids[rows], attention_mask[rows], list(sides[rows]), pack_tokens=pack_tokens))
    cached = torch.cat(pieces).detach().requires_grad_()  # (2B + M, D)

    # Step (2): full-batch loss; gradients for the embeddings and the temperature only.
    out = loss(*loss_inputs(cached, batch, embedder.logit_scale()))
    embedding_grad, scale_grad = torch.autograd.grad(
        out["loss"] * loss_weight, [cached, embedder.log_scale], allow_unused=True
    )

    # Step (3): replay each chunk with a graph and push the cached gradients into the weights.
    for index, (rows, state) in enumerate(zip(chunks, states, strict=True)):
        last = index == len(chunks) - 1
        with no_sync() if not (last and sync_last) else nullcontext(), state, autocast():
            replayed = model(input_ids[rows], attention_mask[rows], list(sides[rows]), pack_tokens=pack_tokens)
            surrogate = (replayed * embedding_grad[rows]).sum()
            if last and scale_grad is not None and embedder.log_scale.requires_grad:
                # The temperature's gradient joins the last backward, so DDP sees every parameter.
                surrogate = surrogate + (embedder.log_scale * scale_grad).sum()
            backward(surrogate)
    return {key: value.detach() for key, value in out.items()}

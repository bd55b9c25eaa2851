"""Padding-free forward passes: the rows of a batch packed end to end, each attending only to itself.

A padded batch of short rows spends most of its compute on padding (STS-style sentences are ~15
tokens in rows padded to 32 or more). :func:`pack_rows` lays the real tokens of every row into a
few packed sequences of at most ``capacity`` tokens (first-fit decreasing), with positions
restarting at 0 for each row; :func:`pool_packed` runs the backbone on them with a
block-diagonal causal mask and takes each row's hidden state at its last real token (the closing
delimiter), in the rows' original order. The embeddings equal those of the padded batch up to
float rounding (tests check 1e-5 on every decoder family we support).

Masks by attention implementation:

* ``sdpa`` / ``flex_attention``: a boolean (P, 1, C, C) mask (True = attend);
* ``eager``: the same as an additive float mask in the model's dtype;
* models with sliding-window layers (Gemma 3, Qwen with ``use_sliding_window``): a mapping
  ``{"full_attention": ..., "sliding_attention": ...}``, the second also cut to the window;
* ``flash_attention_*``: no mask; transformers' flash path reads the restarting ``position_ids``
  and runs flash-attention's variable-length kernel.

Bins are bounded by ``capacity`` because a dense mask costs ``capacity**2`` per packed sequence:
one sequence holding a whole large batch would spend more on masked-out attention than packing
saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class PackedRows:
    """Rows packed into ``P`` sequences of ``C`` tokens.

    Attributes:
        input_ids: (P, C) token ids; the tail of a sequence not filled by rows is padding.
        position_ids: (P, C) positions restarting at 0 for every row (and for the padding tail).
        segments: (P, C) index of the row each token belongs to; -1 for padding.
        last_index: (B,) flat index into ``P * C`` of each row's last real token, in input order.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    last_index: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int((self.segments >= 0).sum())


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices grouped into bins whose lengths sum to at most ``capacity`` (longest rows first).

    A row longer than ``capacity`` gets a bin of its own.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for slot, free in enumerate(room):
            if lengths[index] <= free:
                bins[slot].append(index)
                room[slot] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def tight_capacity(lengths: list[int], limit: int) -> int:
    """The packing capacity for rows of ``lengths`` using as few tokens as ``limit`` allows.

    A fixed capacity pads its last sequence to full width: one 15-token row packed at 512 runs
    512 positions. Here the sequences are as many as ``limit`` needs (``ceil(total / limit)``) and
    each only as wide as an even share of the tokens, 10% slack for first-fit decreasing, and never
    narrower than the longest row (nor wider than ``limit`` unless a row is).
    """
    if limit < 1:
        raise ValueError(f"packing capacity must be >= 1 token, got {limit}")
    total, longest = sum(lengths), max(lengths, default=1)
    sequences = -(-total // limit)
    if sequences <= 1:
        return max(total, 1)
    share = -(-total * 11 // (10 * sequences))
    return max(longest, min(limit, share))


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int) -> PackedRows:
    """Pack the real tokens of a padded (B, T) batch (left or right padding) into sequences.

    Args:
        input_ids: (B, T).
        attention_mask: (B, T), 1 for real tokens; every row needs at least one.
        capacity: tokens per packed sequence; raised to the longest row when that is longer.
    """
    if capacity < 1:
        raise ValueError(f"packing capacity must be >= 1 token, got {capacity}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1).tolist()
    if min(lengths, default=1) < 1:
        raise ValueError("every row needs at least one attended token to be packed")
    width = max(capacity, max(lengths))
    bins = first_fit_decreasing(lengths, width)
    device = input_ids.device
    packed_ids = torch.zeros((len(bins), width), dtype=input_ids.dtype, device=device)
    positions = torch.zeros((len(bins), width), dtype=torch.long, device=device)
    segments = torch.full((len(bins), width), -1, dtype=torch.long, device=device)
    last_index = torch.empty(len(lengths), dtype=torch.long, device=device)
    for slot, rows in enumerate(bins):
        start = 0
        for row in rows:
            length = lengths[row]
            packed_ids[slot, start : start + length] = input_ids[row][mask[row]]
            positions[slot, start : start + length] = torch.arange(length, device=device)
            segments[slot, start : start + length] = row
            last_index[row] = slot * width + start + length - 1
            start += length
        positions[slot, start:] = torch.arange(width - start, device=device)
    return PackedRows(packed_ids, positions, segments, last_index)


def block_causal_mask(segments: torch.Tensor, window: int | None = None, causal: bool = True) -> torch.Tensor:
    """(P, 1, C, C) boolean mask: a token attends to earlier tokens of its own row (and itself).

    Padding tokens (segment -1) attend to earlier padding, so no query row is fully masked.
    ``window``: also drop keys ``window`` or more positions away (sliding-window attention).
    ``causal=False``: a token attends to every token of its own row, later ones too (bidirectional).
    """
    index = torch.arange(segments.shape[1], device=segments.device)
    distance = index[:, None] - index[None, :]  # (C, C) query - key
    allowed = distance >= 0 if causal else torch.ones_like(distance, dtype=torch.bool)
    if window is not None:
        allowed = allowed & (distance.abs() < window)
    same = segments[:, :, None] == segments[:, None, :]  # (P, C, C)
    return (same & allowed)[:, None]


def backbone_masks(
    backbone: PreTrainedModel, segments: torch.Tensor, dtype: torch.dtype, causal: bool = True
) -> object:
    """The ``attention_mask`` argument that makes ``backbone`` attend within rows only (see module doc).

    ``segments``: (P, C) row index of each token, -1 for padding (a padded batch is one row per
    sequence: 0 on real tokens). ``causal=False`` lifts the causal order inside each row.
    """
    config = backbone.config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation.startswith("flash"):
        if not causal:
            raise ValueError(
                f"bidirectional attention needs a dense mask, which {implementation} does not take: "
                "use model.attn_implementation=sdpa (or eager / flex_attention)"
            )
        return None

    def as_mask(allowed: torch.Tensor) -> torch.Tensor:
        if implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        return allowed

    full = as_mask(block_causal_mask(segments, causal=causal))
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and window:
        sliding = as_mask(block_causal_mask(segments, window, causal=causal))
        return {"full_attention": full, "sliding_attention": sliding}
    return full


def attention_dtype(backbone: PreTrainedModel, device: torch.device) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return backbone.get_input_embeddings().weight.dtype


def pool_segments(hidden: torch.Tensor, packed: PackedRows, mode: str) -> torch.Tensor:
    """(B, H) pooled states of the packed rows, in input order (``mode`` as :func:`models.pooling.pool`)."""
    flat = hidden.reshape(-1, hidden.shape[-1])  # (P * C, H)
    if mode == "last_token":
        return flat[packed.last_index]
    segments = packed.segments.reshape(-1)
    real = segments >= 0
    weights = torch.ones_like(segments, dtype=torch.float32)
    if mode == "weighted_mean":
        weights = packed.position_ids.reshape(-1).float() + 1.0  # positions restart per row: the 1-based rank
    rows = len(packed.last_index)
    summed = flat.new_zeros((rows, flat.shape[1]), dtype=torch.float32)
    summed.index_add_(0, segments[real], flat[real].float() * weights[real, None])
    totals = weights.new_zeros(rows).index_add_(0, segments[real], weights[real])
    return summed / totals[:, None]


def pool_packed(
    backbone: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    capacity: int,
    pooling: str = "last_token",
    causal: bool = True,
) -> torch.Tensor:
    """(B, H) pooled hidden states of each row (at its last real token by default), computed on packed sequences."""
    packed = pack_rows(input_ids, attention_mask, capacity)
    dtype = attention_dtype(backbone, input_ids.device)
    outputs = backbone(
        input_ids=packed.input_ids,
        attention_mask=backbone_masks(backbone, packed.segments, dtype, causal),
        position_ids=packed.position_ids,
        use_cache=False,
    )
    return pool_segments(outputs.last_hidden_state, packed, pooling)  # (B, H)

"""Parameter-efficient options: train only the top transformer blocks (and the heads).

On a 2-core CPU a full backward through 30 blocks and a 28M-entry embedding table dominates a
step; training the top blocks keeps the contrastive signal at a fraction of the cost.
"""

from __future__ import annotations

from torch import nn

from models.backbone import transformer_blocks


def train_only_top_layers(backbones: list[nn.Module], top_layers: int) -> None:
    """Freeze embeddings and all but the last ``top_layers`` blocks of each backbone.

    The final norm and everything after the blocks stays trainable, as do the embedder's own
    heads (projection, temperature), which live outside the backbone.
    """
    for backbone in backbones:
        blocks = transformer_blocks(backbone)
        if not 1 <= top_layers <= len(blocks):
            raise ValueError(f"trainer.train_top_layers must be in [1, {len(blocks)}], got {top_layers}")
        frozen = {id(p) for block in blocks[: len(blocks) - top_layers] for p in block.parameters()}
        frozen |= {id(p) for p in backbone.get_input_embeddings().parameters()}
        for parameter in backbone.parameters():
            if id(parameter) in frozen:
                parameter.requires_grad_(False)

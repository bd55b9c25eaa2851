"""What is trained: every weight, only the top transformer blocks (and the heads), or LoRA adapters.

On a 2-core CPU a full backward through 30 blocks and a 28M-entry embedding table dominates a
step; training the top blocks keeps the contrastive signal at a fraction of the cost. LoRA itself
is the model's (``model.lora``, :mod:`models.lora`); here only how ``trainer.train_top_layers``
combines with it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from models.backbone import transformer_blocks
from train.settings import ConfigError


def lora_in_top_layers(model_cfg: DictConfig, top_layers: int | None) -> dict[str, Any]:
    """``trainer.train_top_layers=N`` under LoRA: adapters in the top N blocks only and the delimiter rows
    frozen (as the embeddings are when training the top N blocks fully), so backward stops below them.
    Returns the ``lora`` override for the model's constructor ({} when there is nothing to change)."""
    lora = model_cfg.get("lora")
    if not top_layers or lora is None or not lora.get("r", 0):
        return {}
    return {"lora": {**OmegaConf.to_container(lora, resolve=True), "top_layers": top_layers, "train_delimiters": False}}


def freeze_for_training(embedder: Any, top_layers: int | None) -> None:
    """Apply ``trainer.train_top_layers`` to a model without LoRA (with LoRA, :func:`lora_in_top_layers` did)."""
    if top_layers and embedder.lora is None:
        train_only_top_layers(list(embedder.backbone_folders().values()), top_layers)


def train_only_top_layers(backbones: list[nn.Module], top_layers: int) -> None:
    """Freeze embeddings and all but the last ``top_layers`` blocks of each backbone.

    The final norm and everything after the blocks stays trainable, as do the embedder's own
    heads (projection, temperature), which live outside the backbone.
    """
    for backbone in backbones:
        blocks = transformer_blocks(backbone)
        if not 1 <= top_layers <= len(blocks):
            raise ConfigError(
                f"trainer.train_top_layers must be in [1, {len(blocks)}] (the model's blocks), got {top_layers}"
            )
        frozen = {id(p) for block in blocks[: len(blocks) - top_layers] for p in block.parameters()}
        frozen |= {id(p) for p in backbone.get_input_embeddings().parameters()}
        for parameter in backbone.parameters():
            if id(parameter) in frozen:
                parameter.requires_grad_(False)

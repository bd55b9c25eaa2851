"""LoRA adapters on the decoder (through ``peft``) and the identity of the base weights they need.

With ``model.lora.r > 0`` every backbone weight is frozen and peft adds low-rank adapters to the
chosen linear layers (default: every linear layer of attention and MLP). The delimiter tokens are
new vocabulary rows, so their embeddings are trained too, as those rows only (peft's
``trainable_token_indices``), never the whole embedding matrix. The embedder's temperature and
projection live outside the backbone and train as before.

A LoRA checkpoint stores the adapter, not the base: :class:`BaseIdentity` records how to rebuild
the base (name or folder, or the random config and seed of a test model), its dtype, and a sha256
of its weights as loaded, checked again whenever the checkpoint is loaded or resumed.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbone import transformer_blocks

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "top_layers", "train_delimiters", "rslora")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """``model.lora``: the adapters' shape.

    Args:
        r: the adapters' rank (``0`` in the config: LoRA off).
        alpha: scaling numerator (the update is ``alpha / r * B @ A``); ``None``: ``2 * r``.
        dropout: dropout on the adapters' input.
        target_modules: ``all-linear`` (every linear layer of attention and MLP) or module names
            (``[q_proj, v_proj]``) as peft matches them.
        top_layers: adapters in the top ``N`` transformer blocks only (``None``: in every block); the
            training loop sets it from ``trainer.train_top_layers``.
        train_delimiters: train the delimiter tokens' embedding rows (only those rows).
        rslora: rank-stabilised scaling ``alpha / sqrt(r)`` instead of ``alpha / r``.
    """

    r: int
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    top_layers: int | None = None
    train_delimiters: bool = True
    rslora: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | LoraSettings | None) -> LoraSettings | None:
        """Validate ``model.lora``; ``None`` when it is absent or ``r`` is 0 (LoRA off)."""
        if config is None or isinstance(config, LoraSettings):
            return config
        unknown = sorted(set(config) - set(LORA_KEYS))
        if unknown:
            raise ValueError(f"unknown model.lora option(s) {unknown}; valid options are {list(LORA_KEYS)}")
        r = config.get("r", 0)
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"model.lora.r must be an integer >= 0 (0: LoRA off), got {r!r}")
        if r == 0:
            return None
        alpha = config.get("alpha")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
            raise ValueError(f"model.lora.alpha must be a number > 0 or null (2 x r), got {alpha!r}")
        dropout = config.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {dropout!r}")
        targets = config.get("target_modules", "all-linear")
        if isinstance(targets, str):
            if not targets:
                raise ValueError("model.lora.target_modules must be 'all-linear' or a list of module names")
        else:
            targets = tuple(targets)
            if not targets or not all(isinstance(name, str) and name for name in targets):
                raise ValueError(f"model.lora.target_modules must be 'all-linear' or module names, got {targets!r}")
        top = config.get("top_layers")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise ValueError(f"model.lora.top_layers must be an integer >= 1 or null (every block), got {top!r}")
        for key in ("train_delimiters", "rslora"):
            if not isinstance(config.get(key, True), bool):
                raise ValueError(f"model.lora.{key} must be true or false, got {config.get(key)!r}")
        return cls(
            r=r, alpha=None if alpha is None else float(alpha), dropout=float(dropout), target_modules=targets,
            top_layers=top, train_delimiters=config.get("train_delimiters", True), rslora=config.get("rslora", False),
        )  # fmt: skip

    @property
    def scale_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.r

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = (
            out["target_modules"] if isinstance(out["target_modules"], str) else list(out["target_modules"])
        )
        return out

    def peft_config(self, backbone: nn.Module, delimiter_ids: Sequence[int], base_name: str | None = None) -> Any:
        """peft's ``LoraConfig`` for ``backbone`` (its block count decides ``top_layers``)."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        if self.top_layers is not None:
            targets = top_block_linears(backbone, self.top_layers, None if targets == "all-linear" else targets)
        return LoraConfig(
            r=self.r, lora_alpha=self.scale_alpha, lora_dropout=self.dropout, target_modules=targets,
            use_rslora=self.rslora,
            trainable_token_indices=sorted(set(delimiter_ids)) if self.train_delimiters else None,
        )  # fmt: skip


def top_block_linears(backbone: nn.Module, top_layers: int, names: Sequence[str] | None) -> list[str]:
    """Full names of the linear layers in the top ``top_layers`` blocks (those called ``names``, if given).

    Full names because peft's ``layers_to_transform`` does not find the blocks of a bare base model
    (its pattern wants a parent before ``layers.N``).
    """
    from transformers.pytorch_utils import Conv1D

    blocks = transformer_blocks(backbone)
    if top_layers > len(blocks):
        raise ValueError(f"model.lora.top_layers must be in [1, {len(blocks)}] for this model, got {top_layers}")
    prefix = next(name for name, module in backbone.named_modules() if module is blocks)
    found = []
    for index in range(len(blocks) - top_layers, len(blocks)):
        for name, module in blocks[index].named_modules():
            if isinstance(module, (nn.Linear, Conv1D)) and (names is None or name.rsplit(".", 1)[-1] in names):
                found.append(f"{prefix}.{index}.{name}")
    if not found:
        raise ValueError(f"model.lora: no linear layer named {list(names or [])} in the top {top_layers} blocks")
    return found


def add_adapter(backbone: nn.Module, settings: LoraSettings, delimiter_ids: Sequence[int], base_name: str | None):
    """Freeze ``backbone`` and wrap it in a peft model with fresh adapters (B = 0: it starts as the base).

    Adapters are float32 even on a bf16/fp16 base (peft's ``autocast_adapter_dtype``), so AdamW's
    updates are not lost to rounding while the frozen weights keep half the memory.
    """
    from peft import get_peft_model

    config = settings.peft_config(backbone, delimiter_ids, base_name)
    try:
        with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing (transformers 5)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            adapted = get_peft_model(backbone, config, autocast_adapter_dtype=True)
    except ValueError as error:  # e.g. target_modules that name no module of this architecture
        raise ValueError(f"model.lora: peft could not add adapters to {type(backbone).__name__}: {error}") from None
    if base_name is not None:  # the name the run was given (alias, hub id), not the cache folder it resolved to
        adapted.peft_config["default"].base_model_name_or_path = base_name
    return adapted


def load_adapter(backbone: nn.Module, folder: Path, trainable: bool = False):
    """Wrap ``backbone`` in the adapter saved in ``folder`` (peft's ``adapter_config.json`` + weights)."""
    from peft import PeftModel

    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} holds no {ADAPTER_WEIGHTS}: not a finished LoRA checkpoint")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(backbone, str(folder), is_trainable=trainable, autocast_adapter_dtype=True)


def describe_adapters(embedder: Any) -> str:
    """One line for the training log: the adapters' shape and where they sit."""
    settings = embedder.lora
    parts = []
    for folder, backbone in embedder.backbone_folders().items():
        names = backbone.base_model.targeted_module_names
        kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
        parts.append(f"{folder}: {len(names)} modules ({', '.join(kinds)})")
    scaling = f"alpha {settings.scale_alpha:g}{' (rsLoRA)' if settings.rslora else ''}"
    blocks = f"top {settings.top_layers} blocks" if settings.top_layers else "every block"
    rows = "delimiter rows trained" if settings.train_delimiters else "delimiter rows frozen"
    return f"r {settings.r}, {scaling}, dropout {settings.dropout:g}, {blocks}; {'; '.join(parts)}; {rows}"


def weights_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of tensors, in name order (0.4 s per 135M fp32)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class BaseIdentity:
    """How to rebuild the frozen base of a LoRA checkpoint, and the hash its weights must have.

    ``pretrained`` is what the run was given (an offline alias, a folder or a hub id);
    ``random_config`` + ``seed`` rebuild a test model initialised in code. ``sha256`` covers the
    base's weights as loaded, in ``dtype``, before the delimiter rows were added.
    """

    pretrained: str | None
    dtype: str
    sha256: str
    parameters: int
    random_config: dict[str, Any] | None = None
    seed: int | None = None
    revision: str | None = None

    @classmethod
    def of(
        cls,
        backbone: nn.Module,
        pretrained: str | None,
        dtype: str,
        random_config: Mapping[str, Any] | None,
        seed: int | None,
    ) -> BaseIdentity:
        if pretrained is None and seed is None:
            raise ValueError("a LoRA adapter on a random-config backbone needs model.seed to rebuild its base")
        state = backbone.state_dict()
        return cls(
            pretrained=pretrained, dtype=dtype, sha256=weights_sha256(state.items()),
            parameters=sum(t.numel() for t in state.values()),
            random_config=dict(random_config) if random_config is not None else None,
            seed=seed if pretrained is None else None, revision=getattr(backbone.config, "_commit_hash", None),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> BaseIdentity:
        missing = [key for key in ("pretrained", "dtype", "sha256", "parameters") if key not in data]
        if missing:
            raise ValueError(f"{where}: base_model lacks {missing}; this LoRA checkpoint cannot name its base")
        return cls(**{key: data[key] for key in data if key in cls.__dataclass_fields__})

    def check(self, backbone: nn.Module, where: str) -> None:
        """Raise when ``backbone``'s weights are not the ones the adapter was trained on."""
        found = weights_sha256(backbone.state_dict().items())
        if found != self.sha256:
            source = self.pretrained or f"random_config with seed {self.seed}"
            raise ValueError(
                f"{where}: the base model's weights ({source}, {self.dtype}) have sha256 {found[:16]}..., but the "
                f"adapter was trained on {self.sha256[:16]}...: the base changed (another revision, conversion or "
                "dtype). Pass the original base (from_pretrained(..., base_model=PATH)) or retrain"
            )

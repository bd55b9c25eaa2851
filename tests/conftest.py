"""Shared fixtures: the real Hydra config composed with a tiny random model, and test paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
SHARED_DATA = Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

# One intra-op thread per test process (and the processes it launches): tiny models gain nothing from a
# second, and OpenMP's barrier makes a 2-thread op wait for a core another job holds: on a loaded machine
# a 2 s test took 118 s with two threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "HF_DATASETS_CACHE" not in os.environ:  # Arrow copies of the tests' small files stay out of the user's cache
    import tempfile

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="cpt-tests-datasets-")

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
# One tiny random config per decoder family the models support (pooling, packing and export tests).
DECODER_FAMILIES = [
    {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
    {
        "model_type": "qwen3",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
    },
    {
        "model_type": "gemma3_text",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
    },
    {
        "model_type": "gpt_neox",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
]
TWO_SIDES = {
    "query": {"open_token": "<|q|>", "close_token": "<|/q|>"},
    "doc": {"open_token": "<|d|>", "close_token": "<|/d|>"},
}


def compose_train_config(overrides: list[str], output_dir: Path):
    """The real ``configs/train.yaml`` with overrides, resolvable outside ``@hydra.main``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hydra.run.dir={output_dir}", f"data_dir={SHARED_DATA}", *overrides],
            return_hydra_config=True,
        )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@pytest.fixture
def tiny_embedder():
    from models import DecoderEmbedder

    return DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0)


def require_shared_data() -> Path:
    if not (SHARED_DATA / "senteval").is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (set CPT_DATA_DIR)")
    return SHARED_DATA

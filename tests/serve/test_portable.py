"""Portable exports: the classic sentence-transformers layout, transformers 4's config fields, and ``--verify``.

The fast tests check the files older readers parse (and that today's stack still reads them the
same); the integration tests load every decoder family in the older stack itself
(sentence-transformers 3.4 + transformers 4.57 in the side virtualenv of ``serve.sidestack``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY_LLAMA, TWO_SIDES

BASE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
# each family with RoPE settings away from transformers' defaults, so a reader that misses them differs
FAMILIES = {
    "llama": {"model_type": "llama", **BASE, "num_key_value_heads": 2, "rope_theta": 100_000.0},
    "llama3-scaled-rope": {
        "model_type": "llama", **BASE, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rope_theta": 500_000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
    "qwen2": {"model_type": "qwen2", **BASE, "num_key_value_heads": 2, "rope_theta": 1_000_000.0},
    "qwen3": {"model_type": "qwen3", **BASE, "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 1_000_000.0},
    "gemma3": {
        "model_type": "gemma3_text", **BASE, "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 20_000.0, "sliding_window": 4,
    },
    "gpt_neox": {"model_type": "gpt_neox", **BASE, "rotary_emb_base": 50_000, "rotary_pct": 0.5},
}  # fmt: skip
# what transformers 4.57's config classes read for each family (checked in its sources)
LEGACY = {
    "llama": {"rope_theta": 100_000.0, "rope_scaling": None},
    "llama3-scaled-rope": {
        "rope_theta": 500_000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    },  # fmt: skip
    "gpt2": {},
    "qwen2": {"rope_theta": 1_000_000.0, "rope_scaling": None},
    "qwen3": {"rope_theta": 1_000_000.0, "rope_scaling": None},
    "gemma3": {"rope_theta": 1_000_000.0, "rope_scaling": None, "rope_local_base_freq": 20_000.0},
    "gpt_neox": {"rope_theta": 50_000, "rope_scaling": None, "partial_rotary_factor": 0.5,
                 "rotary_emb_base": 50_000, "rotary_pct": 0.5},
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_legacy_config_fields_carry_each_familys_rope(family):
    from transformers import AutoConfig

    from models import DecoderEmbedder
    from serve.portable import legacy_config_fields

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=FAMILIES[family], seed=0)
    config = model.backbone.config.to_dict()
    legacy = legacy_config_fields(config)
    assert legacy == LEGACY[family]
    # transformers 5 reads the file with the legacy fields beside the new ones as the same model
    reread = AutoConfig.for_model(**{**config, **{k: v for k, v in legacy.items() if k not in config}})
    assert getattr(reread, "rope_parameters", None) == getattr(model.backbone.config, "rope_parameters", None)


def test_the_export_is_in_the_classic_layout(tmp_path):
    from models import DecoderEmbedder
    from serve.export import export

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, projection_dim=16,
                                  matryoshka_dims=[4, 8])  # fmt: skip
    model.save_pretrained(tmp_path / "checkpoint")
    export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=40)
    folder = tmp_path / "out" / "sentence-transformers" / "doc"
    modules = json.loads((folder / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"),
        ("3_Normalize", "sentence_transformers.models.Normalize"),
    ]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_lasttoken"] is True
    assert not any(value for key, value in pooling.items() if key.startswith("pooling_mode_") and "last" not in key)
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {"max_seq_length": 40,
                                                                              "do_lower_case": False}  # fmt: skip
    assert json.loads((folder / "2_Dense" / "config.json").read_text()) == {
        "in_features": 32, "out_features": 16, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"
    }  # fmt: skip
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer["model_input_names"] == ["input_ids", "attention_mask"]
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["matryoshka_dimensions"] == [4, 8, 16] and config["is_matryoshka"] is True


def test_every_reader_of_the_export_tokenizer_gets_our_ids(tmp_path):
    """``tokenizers.Tokenizer.from_file``, transformers and sentence-transformers on the exported files alone:
    outer whitespace stripped, special-token text as text, truncation at the export's length (not training's)."""
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from models import DecoderEmbedder
    from serve.export import export
    from serve.probes import probes_for

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0)
    model.tokenizer.backend_tokenizer.enable_truncation(28)  # what an older training run left in its tokenizer
    model.save_pretrained(tmp_path / "checkpoint")
    info = export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=40)
    assert info["input_normalization"] == {"strip_outer_whitespace": "str.strip()", "special_token_text": "text"}
    texts = [*probes_for(TWO_SIDES), "x" * 100, "  <|endoftext|>\n"]
    for side in TWO_SIDES:
        folder = tmp_path / "out" / "sentence-transformers" / side
        batch = model.tokenize(texts, side, 40)
        ours = [
            ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]
        assert max(map(len, ours)) == 40
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert raw.truncation["max_length"] == 40
        assert [encoding.ids for encoding in raw.encode_batch(texts)] == ours
        assert AutoTokenizer.from_pretrained(folder)(texts, truncation=True, max_length=40)["input_ids"] == ours
        features = SentenceTransformer(str(folder), device="cpu").preprocess(texts)
        assert [ids[mask.bool()].tolist() for ids, mask in zip(features["input_ids"], features["attention_mask"],
                                                              strict=True)] == ours  # fmt: skip
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert "max_length" not in config and config["model_max_length"] == 40 and config["split_special_tokens"]


def test_verify_passes_a_good_export_and_fails_a_broken_one(tmp_path, capsys):
    """The current-stack part of ``--verify``: encode, sentence-transformers and our server over HTTP."""
    from safetensors.torch import load_file, save_file

    from models import DecoderEmbedder
    from serve.verify import run_verify, verify

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, matryoshka_dims=[8])
    model.save_pretrained(tmp_path / "checkpoint")
    from serve.export import main

    main([str(tmp_path / "checkpoint"), str(tmp_path / "out"), "--max-seq-length", "40", "--verify",
          "--no-side-stack"])  # fmt: skip
    report = (tmp_path / "out" / "verify" / "parity.md").read_text()
    assert "our server (HTTP) | doc | 8 |" in report and "**NO**" not in report
    # a sentence-transformers folder whose weights drifted from the checkpoint's
    weights_file = tmp_path / "out" / "sentence-transformers" / "doc" / "model.safetensors"
    weights = load_file(weights_file)
    weights["layers.1.mlp.down_proj.weight"] = weights["layers.1.mlp.down_proj.weight"] * 1.01
    save_file(weights, weights_file)
    rows = verify(tmp_path / "out", side_stack=False)
    bad = {(row.runtime.split(" ")[0], row.side) for row in rows if not row.passed(1e-4)}
    assert bad == {("sentence-transformers", "doc")}
    assert not run_verify(tmp_path / "out", side_stack=False)
    assert "**NO**" in capsys.readouterr().out


def side_stack_or_skip():
    from serve.sidestack import SideStackUnavailable, side_stack_python

    try:
        return side_stack_python(create=True)
    except SideStackUnavailable as error:
        pytest.skip(str(error))


@pytest.mark.integration
@pytest.mark.parametrize("family", FAMILIES)
def test_the_older_stack_reads_every_family_identically(tmp_path, family):
    """sentence-transformers 3.4 + transformers 4.57 (side venv) on each family's export; ~20 s each."""
    from models import DecoderEmbedder
    from serve.export import export
    from serve.probes import probes_for
    from serve.sidestack import encode_in_side_stack

    side_stack_or_skip()
    texts = list(probes_for(TWO_SIDES))  # as they are: outer whitespace, special-token text, > 512 tokens
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=FAMILIES[family], seed=0)
    model.save_pretrained(tmp_path / "checkpoint")
    export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=48)
    got, versions = encode_in_side_stack(tmp_path / "out" / "sentence-transformers" / "doc", texts)
    assert versions["sentence-transformers"].startswith("3.") and versions["transformers"].startswith("4.")
    assert np.abs(got - model.encode(texts, "doc", max_length=48).numpy()).max() < 1e-5


@pytest.mark.integration
def test_verify_with_the_older_stack_and_infinity(tmp_path):
    """Every runtime of ``--verify``, infinity-emb over HTTP included; ~1.5 min."""
    from models import DecoderEmbedder
    from serve.export import export
    from serve.verify import verify

    side_stack_or_skip()
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, projection_dim=16)
    model.save_pretrained(tmp_path / "checkpoint")
    export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=48)
    rows = verify(tmp_path / "out")
    runtimes = {row.runtime.split(" ")[0] for row in rows}
    assert {"sentence-transformers", "our", "infinity-emb"} <= runtimes
    assert all(row.skipped is None and row.passed(1e-5) for row in rows), rows

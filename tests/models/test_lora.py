"""LoRA adapters: what trains, adapter checkpoints (load, merge, base hash), and bad settings named."""

from __future__ import annotations

import json

import pytest
import torch

from models import DecoderEmbedder
from models.lora import LoraSettings
from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["the cat sat on the mat", "def add(a, b): return a + b", "quarterly results rose"]
DELIMITERS = ("<|q|>", "<|/q|>", "<|d|>", "<|/d|>")


def lora_model(shared_weights: bool = True, seed: int = 0, **lora) -> DecoderEmbedder:
    return DecoderEmbedder.build(
        None, TWO_SIDES, random_config=TINY_LLAMA, seed=seed, shared_weights=shared_weights, projection_dim=16,
        lora={"r": 4, **lora},
    )  # fmt: skip


def one_step(model: DecoderEmbedder, lr: float = 0.05) -> None:
    """One SGD step on a contrastive-ish objective, so every trainable tensor moves."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    queries = model.tokenize(TEXTS, "query", max_length=32)
    docs = model.tokenize(TEXTS[::-1], "doc", max_length=32)
    q = model(queries["input_ids"], queries["attention_mask"], "query")
    d = model(docs["input_ids"], docs["attention_mask"], "doc")
    torch.nn.functional.cross_entropy(q @ d.T * model.logit_scale(), torch.arange(len(TEXTS))).backward()
    optimizer.step()


def test_r_zero_is_off_and_builds_todays_model_exactly() -> None:
    assert LoraSettings.from_config({"r": 0, "alpha": 16}) is None
    plain = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=3)
    off = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=3, lora={"r": 0})
    assert off.lora is None and plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in off.state_dict().items())


def test_only_adapters_delimiter_rows_and_heads_train() -> None:
    model = lora_model()
    untrained = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, projection_dim=16)
    before = untrained.backbone.get_input_embeddings().weight
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"temperature.log_scale", "projection.weight"} <= trainable
    assert all(name in {"temperature.log_scale", "projection.weight"} or "lora_" in name or "trainable_tokens" in name
               for name in trainable)  # fmt: skip
    assert model.backbone.base_model.targeted_module_names  # every linear layer of attention and MLP
    assert len(model.backbone.base_model.targeted_module_names) == 7 * TINY_LLAMA["num_hidden_layers"]
    torch.testing.assert_close(model.encode(TEXTS, "query"), untrained.encode(TEXTS, "query"), atol=0, rtol=0)

    one_step(model)
    merged = model.merge_adapters().backbone.get_input_embeddings().weight
    ids = model.tokenizer.convert_tokens_to_ids(list(DELIMITERS))
    changed = (merged != before).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(ids)  # the delimiter rows, and only those rows


def test_bf16_base_keeps_float32_adapters() -> None:
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, dtype="bfloat16", lora={"r": 4})
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    assert model.base_identity.dtype == "bfloat16"
    one_step(model)  # runs without autocast: peft casts the bf16 activations for the fp32 adapters


@pytest.mark.parametrize("shared_weights", [True, False], ids=["shared", "per-side"])
def test_adapter_checkpoint_round_trip_and_merge(tmp_path, shared_weights: bool) -> None:
    model = lora_model(shared_weights=shared_weights)
    one_step(model)
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "embedder_config.json").read_text())
    assert saved["lora"]["r"] == 4 and saved["base_model"]["random_config"]["model_type"] == "llama"
    assert len(saved["base_model"]["sha256"]) == 64
    folders = ["adapter"] if shared_weights else ["adapter-query", "adapter-doc"]
    for folder in folders:
        assert (tmp_path / "ckpt" / folder / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "ckpt").glob("backbone*"))  # no copy of the base
    adapter_bytes = sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*.safetensors"))
    assert adapter_bytes < sum(p.numel() * 4 for p in model.parameters()) / 2

    unmerged = DecoderEmbedder.from_pretrained(tmp_path / "ckpt", merge_adapters=False)
    merged = DecoderEmbedder.from_pretrained(tmp_path / "ckpt")
    assert unmerged.lora == model.lora and merged.lora is None
    for side in ("query", "doc"):
        expected = model.encode(TEXTS, side)
        torch.testing.assert_close(unmerged.encode(TEXTS, side), expected, atol=0, rtol=0)
        torch.testing.assert_close(merged.encode(TEXTS, side), expected, atol=1e-5, rtol=0)

    merged.save_pretrained(tmp_path / "full")  # a merged model saves as a plain checkpoint
    assert json.loads((tmp_path / "full" / "embedder_config.json").read_text())["format_version"] == 1
    plain = DecoderEmbedder.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(plain.encode(TEXTS, "query"), merged.encode(TEXTS, "query"), atol=0, rtol=0)


def test_a_different_base_is_refused_by_its_hash(tmp_path) -> None:
    model = lora_model()
    model.save_pretrained(tmp_path / "ckpt")
    other = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=7)
    other.backbone.save_pretrained(tmp_path / "other")  # same architecture, other weights
    other.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="sha256"):
        DecoderEmbedder.from_pretrained(tmp_path / "ckpt", base_model=str(tmp_path / "other"))


def test_top_layers_adapt_only_the_top_blocks_and_frozen_delimiters_reload(tmp_path) -> None:
    model = lora_model(top_layers=1, train_delimiters=False)
    names = model.backbone.base_model.targeted_module_names
    assert names and all(name.startswith("layers.1.") for name in names)
    assert not any("trainable_tokens" in n for n, p in model.named_parameters() if p.requires_grad)
    one_step(model)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = DecoderEmbedder.from_pretrained(tmp_path / "ckpt")  # delimiter rows rebuilt as at training
    torch.testing.assert_close(loaded.encode(TEXTS, "doc"), model.encode(TEXTS, "doc"), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_lora_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = DecoderEmbedder.build(
            None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, lora={"r": 4}, gradient_checkpointing=checkpointing
        )
        with torch.no_grad():  # B != 0, so A gets gradients too
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        model.train()
        batch = model.tokenize(TEXTS, "query", max_length=32)
        model(batch["input_ids"], batch["attention_mask"], "query").pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"r": -1}, "model.lora.r"),
        ({"r": 4, "alpha": 0}, "model.lora.alpha"),
        ({"r": 4, "dropout": 1.5}, "model.lora.dropout"),
        ({"r": 4, "target_modules": []}, "model.lora.target_modules"),
        ({"r": 4, "top_layers": 0}, "model.lora.top_layers"),
        ({"r": 4, "rank": 8}, "unknown model.lora option"),
        ({"r": 4, "top_layers": 9}, r"top_layers must be in \[1, 2\]"),
        ({"r": 4, "target_modules": ["no_such_proj"]}, "peft could not add adapters"),
    ],
)
def test_bad_lora_settings_are_named(lora, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, lora=lora)

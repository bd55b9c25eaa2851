"""What older readers of a sentence-transformers folder need: the classic layout and legacy config fields.

sentence-transformers 6 and transformers 5 save a layout that the stacks users already run
cannot read, or read wrongly without saying so:

- ``modules.json`` names ``sentence_transformers.base.modules.*`` classes (3.x cannot import
  them); the pooling config says ``pooling_mode: "lasttoken"`` where 3.x, TEI and vLLM read
  ``pooling_mode_lasttoken: true``; ``sentence_bert_config.json`` carries keys 3.x rejects.
- ``tokenizer_config.json`` names ``TokenizersBackend``, a class transformers 4 lacks; its
  replacement there, ``PreTrainedTokenizerFast``, returns ``token_type_ids`` unless
  ``model_input_names`` says otherwise, which GPT-2 turns into a shifted embedding.
- ``config.json`` keeps RoPE in ``rope_parameters`` only; transformers 4 reads ``rope_theta``
  (and, per architecture, ``rope_scaling``, ``rope_local_base_freq``, ``rotary_emb_base``,
  ``rotary_pct``) and silently falls back to its defaults without them: a model that loads and
  returns different vectors.
- the tokenizer files keep whatever state the training left in them (a fast tokenizer saves the
  truncation of its last call: 30 tokens for a short training run), and say nothing of our input
  normalisation (:mod:`models.tokenization`): readers that do not strip outer whitespace
  themselves, or that parse ``<|endoftext|>`` in a text as the special token, embed other ids.

The tokenizer is rewritten so that every reader builds our ids from the files alone
(:func:`portable_tokenizer`): ``tokenizer.json`` truncates at the export's ``max_seq_length``,
its normalizer strips outer whitespace first (:data:`models.tokenization.STRIP_NORMALIZER`), and
its special tokens leave the added vocabulary for the model's (their ids unchanged), so a reader
of ``tokenizer.json`` alone (``tokenizers.Tokenizer.from_file``, TEI) tokenizes their text as
text; ``tokenizer_config.json`` says ``split_special_tokens: true``, which transformers 4.5x and 5
apply when they add the special tokens back from its ``added_tokens_decoder``. The delimiters are
added by the post-processor by id, as before.

:func:`make_portable` rewrites a folder saved by sentence-transformers 6 into the classic layout,
which every version from 3.x to 6.x loads (6.x reads the classic layout too), and adds the
legacy fields next to the new ones so transformers 4.5x and 5.x build the same model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from models.tokenization import SPLIT_SPECIAL_TOKENS, STRIP_NORMALIZER

logger = logging.getLogger(__name__)

CLASSIC_MODULE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
# sentence-transformers 6's pooling_mode names -> the classic pooling_mode_* key each one is
CLASSIC_POOLING = {
    "cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "weightedmean": "weightedmean_tokens",
    **{name: name for name in POOLING_MODES},
}  # fmt: skip
# tokenizer_config.json keys transformers 5 writes that only describe how it loaded the files
TOKENIZER_RUNTIME_KEYS = ("backend", "is_local", "local_files_only")
# tokenizer_config.json keys a call's truncation leaves behind (transformers 5 saves the last call's settings)
TOKENIZER_CALL_KEYS = ("max_length", "stride", "truncation_strategy")
# a tokenizer class every transformers version since 3 knows; the tokenizer itself is tokenizer.json
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def legacy_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields transformers 4.x reads for ``config`` (a transformers 5 ``config.json``), to add beside it.

    RoPE: a flat ``rope_parameters`` gives ``rope_theta`` and, for a scaled RoPE, ``rope_scaling``
    (GPT-NeoX: ``rotary_emb_base`` and ``rotary_pct``); one nested by layer type (Gemma 3) gives
    the global RoPE from ``full_attention`` and ``rope_local_base_freq`` from ``sliding_attention``.
    """
    legacy: dict[str, Any] = {}
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or not rope:
        return legacy
    layer_types = set(config.get("layer_types") or ())
    if layer_types and set(rope) <= layer_types | {"full_attention", "sliding_attention"}:
        full = rope.get("full_attention") or {}
        sliding = rope.get("sliding_attention") or {}
        if "rope_theta" in full:
            legacy["rope_theta"] = full["rope_theta"]
        legacy["rope_scaling"] = _legacy_rope_scaling(full)
        if "rope_theta" in sliding:
            legacy["rope_local_base_freq"] = sliding["rope_theta"]
        return legacy
    if "rope_theta" in rope:
        legacy["rope_theta"] = rope["rope_theta"]
    legacy["rope_scaling"] = _legacy_rope_scaling(rope)
    if "partial_rotary_factor" in rope:
        legacy["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if config.get("model_type") == "gpt_neox":
        legacy["rotary_emb_base"] = rope.get("rope_theta", 10_000.0)
        legacy["rotary_pct"] = rope.get("partial_rotary_factor", 1.0)
    return legacy


def _legacy_rope_scaling(rope: dict[str, Any]) -> dict[str, Any] | None:
    """transformers 4's ``rope_scaling``: the RoPE parameters minus the base, or None for plain RoPE."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    scaling = {key: value for key, value in rope.items() if key not in ("rope_theta", "partial_rotary_factor")}
    scaling.setdefault("rope_type", kind)
    return scaling


def make_portable(folder: Path, max_seq_length: int, embedding_dim: int, matryoshka_dims: list[int] | None) -> None:
    """Rewrite the sentence-transformers folder ``folder`` (saved by sentence-transformers 6) in place.

    ``matryoshka_dims`` (with ``embedding_dim``, the full size) become ``config.json``'s
    ``matryoshka_dimensions``: the output sizes a reader may truncate to.
    """
    folder = Path(folder)
    modules = _read(folder / "modules.json")
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in CLASSIC_MODULE_TYPES:
            raise ValueError(f"{folder / 'modules.json'}: no classic equivalent for module type {module['type']!r}")
        module["type"] = CLASSIC_MODULE_TYPES[kind]
        module_dir = folder / module["path"]
        if kind == "Transformer":
            _write(module_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
            _portable_transformer_files(
                module_dir, sorted({*matryoshka_dims, embedding_dim}) if matryoshka_dims else None
            )
            portable_tokenizer(module_dir, max_seq_length)
        elif kind == "Pooling":
            _write(module_dir / "config.json", _classic_pooling(_read(module_dir / "config.json")))
        elif kind == "Dense":
            dense = _read(module_dir / "config.json")
            _write(
                module_dir / "config.json",
                {key: dense[key] for key in ("in_features", "out_features", "bias", "activation_function")},
            )
        elif kind == "Normalize" and (module_dir / "config.json").is_file():
            (module_dir / "config.json").unlink()  # 3.x's Normalize has no config; 6.x does not need one
    _write(folder / "modules.json", modules)
    settings = _read(folder / "config_sentence_transformers.json")
    settings.pop("model_type", None)
    _write(folder / "config_sentence_transformers.json", settings)


def _classic_pooling(pooling: dict[str, Any]) -> dict[str, Any]:
    if "word_embedding_dimension" in pooling:
        return pooling
    mode = CLASSIC_POOLING.get(pooling["pooling_mode"])
    if mode is None:
        raise ValueError(f"pooling mode {pooling['pooling_mode']!r} has no classic pooling_mode_* key")
    classic: dict[str, Any] = {"word_embedding_dimension": pooling["embedding_dimension"]}
    classic.update({f"pooling_mode_{name}": name == mode for name in POOLING_MODES})
    classic["include_prompt"] = pooling.get("include_prompt", True)
    return classic


def _portable_transformer_files(folder: Path, matryoshka_dims: list[int] | None) -> None:
    config = _read(folder / "config.json")
    config.update({key: value for key, value in legacy_config_fields(config).items() if key not in config})
    if matryoshka_dims:
        # vLLM reads these from the model's config to accept the API's `dimensions`
        config["matryoshka_dimensions"] = matryoshka_dims
        config["is_matryoshka"] = True
    _write(folder / "config.json", config)
    tokenizer = _read(folder / "tokenizer_config.json")
    for key in TOKENIZER_RUNTIME_KEYS:
        tokenizer.pop(key, None)
    tokenizer["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    # transformers 4's PreTrainedTokenizerFast also returns token_type_ids (zeros) unless told not
    # to, and GPT-2 adds the embedding of token 0 to every position when it is given them
    tokenizer["model_input_names"] = ["input_ids", "attention_mask"]
    _write(folder / "tokenizer_config.json", tokenizer)


def portable_tokenizer(folder: Path, max_seq_length: int) -> None:
    """Rewrite ``folder``'s ``tokenizer.json`` and ``tokenizer_config.json`` so every reader gets our ids.

    See the module docstring. Special tokens stay in the added vocabulary only when the model's
    vocabulary is not a token -> id map (a Unigram list): readers of ``tokenizer.json`` alone then
    still parse their text as the tokens, which the export logs.
    """
    folder = Path(folder)
    tokenizer = _read(folder / "tokenizer.json")
    tokenizer["truncation"] = {"direction": "Right", "max_length": max_seq_length, "strategy": "LongestFirst",
                               "stride": 0}  # fmt: skip
    old = tokenizer.get("normalizer")
    tokenizer["normalizer"] = (
        STRIP_NORMALIZER if old is None else {"type": "Sequence", "normalizers": [STRIP_NORMALIZER, old]}
    )
    vocab = tokenizer["model"].get("vocab")
    added = tokenizer.get("added_tokens") or []
    if SPLIT_SPECIAL_TOKENS and isinstance(vocab, dict):
        for token in added:
            if token["special"]:
                if vocab.setdefault(token["content"], token["id"]) != token["id"]:
                    raise ValueError(f"{folder}: special token {token['content']!r} has two ids")
        tokenizer["added_tokens"] = [token for token in added if not token["special"]]
    elif SPLIT_SPECIAL_TOKENS:
        logger.warning("%s: the %s vocabulary keeps its special tokens in tokenizer.json; readers of that file "
                       "alone parse their text as the tokens", folder, tokenizer["model"].get("type"))  # fmt: skip
    plain = [token["content"] for token in tokenizer.get("added_tokens") or [] if not token["special"]]
    if plain:  # split out before the normalizer runs, so whitespace beside them is stripped too
        logger.warning("%s: non-special added tokens %s: readers of tokenizer.json strip whitespace next to them, "
                       "which our tokenization keeps", folder, plain[:5])  # fmt: skip
    _write(folder / "tokenizer.json", tokenizer)
    config = _read(folder / "tokenizer_config.json")
    for key in TOKENIZER_CALL_KEYS:
        config.pop(key, None)
    config["model_max_length"] = max_seq_length
    config["split_special_tokens"] = SPLIT_SPECIAL_TOKENS
    _write(folder / "tokenizer_config.json", config)


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

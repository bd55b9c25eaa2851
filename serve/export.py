"""Export a checkpoint for serving: our own folder format plus one sentence-transformers folder per side.

Layout written to ``OUT``::

    OUT/                                  DecoderEmbedder.save_pretrained (``python -m serve --model OUT``)
    OUT/sentence-transformers/<side>/     SentenceTransformer(OUT/sentence-transformers/<side>)
    OUT/export.json                       sides, folders, embedding size, max_seq_length
    OUT/sentence-transformers/<side>/README.md   the model card (serve.model_card): base, data, scores, audit
    OUT/contamination.json                the checkpoint's `pairdata audit` report, when it has one (also per side)
    OUT/onnx/<side>/                      with --onnx: an ONNX graph per side (see serve.onnx_export)
    OUT/verify/                           with --verify: the parity table across runtimes (serve.verify)

Each side gets its own sentence-transformers folder because the embedding is the hidden state
at the side's *closing* delimiter: sentence-transformers prompts can only prepend text, so the
``open text close`` wrapping is done by the folder's tokenizer post-processor, which differs per
side (and a tower with separate weights needs separate folders anyway). The modules are
Transformer -> Pooling (the checkpoint's: lasttoken, mean or weightedmean) -> [Dense, when the
model has a projection] -> Normalize; a side with a task instruction gets it as the folder's
default prompt. ``export.json``'s ``stacks`` says which serving stacks reproduce the export
(:mod:`serve.stacks`); a bidirectional checkpoint gets no sentence-transformers folders at all,
since no such stack would run it bidirectionally.

CLI::

    python -m serve.export CHECKPOINT OUT [--max-seq-length 512] [--onnx [--onnx-int8]] [--verify]
                           [--results outputs/eval/beir/.../results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models import DecoderEmbedder

ST_DIR = "sentence-transformers"


def export(
    checkpoint: str | Path,
    out: str | Path,
    max_seq_length: int = 512,
    onnx: bool = False,
    onnx_int8: bool = False,
    results: Sequence[str | Path] = (),
) -> dict:
    """Export ``checkpoint`` (a checkpoint or a run folder: newest checkpoint) into ``out``.

    Each sentence-transformers folder gets a model card (``README.md``, :mod:`serve.model_card`)
    naming the base model, the training data, scores (``results``: ``results.json`` files of
    ``eval/run.py``) and the checkpoint's contamination audit, which is copied beside it.

    Returns:
        the ``export.json`` content.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 (two delimiters and one token), got {max_seq_length}")
    from models import DecoderEmbedder
    from models.embedder import resolve_checkpoint_dir
    from serve.model_card import AUDIT_FILE, CARD, copy_audit, model_card
    from serve.stacks import refused

    out = Path(out)
    source = resolve_checkpoint_dir(checkpoint)
    model = DecoderEmbedder.from_pretrained(source).eval()  # LoRA adapters merged into the weights
    info = export_info(model, source, max_seq_length)
    if model.bidirectional and (onnx or onnx_int8):
        raise ValueError(f"{source}: ONNX export of a bidirectional model (model.bidirectional) is not supported; "
                         "serve the export with python -m serve (torch backend)")  # fmt: skip
    model.save_pretrained(out)
    folders = {}
    for side in model.side_names if refused(info["stacks"], "sentence-transformers") is None else ():
        folder = out / ST_DIR / side
        write_sentence_transformer(model, side, folder, max_seq_length)
        folders[side] = info["sides"][side] = str(folder.relative_to(out))
    audit = copy_audit(source, [out, *(out / folder for folder in folders.values())])
    info["audit"] = AUDIT_FILE if audit is not None else None
    for side, folder in folders.items():
        spec = model.sides[side]
        card = model_card(side, info, source, spec.open_token, spec.close_token, audit, [Path(r) for r in results])
        (out / folder / CARD).write_text(card, encoding="utf-8")
    if onnx or onnx_int8:
        from serve.onnx_export import ONNX_DIR, export_onnx

        checks = export_onnx(model, out, {side: out / folder for side, folder in folders.items()}, max_seq_length,
                             int8=onnx_int8)  # fmt: skip
        info["onnx"] = {"folder": ONNX_DIR, "int8": onnx_int8, "check": checks}
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def export_info(model: DecoderEmbedder, source: Path, max_seq_length: int) -> dict:
    """``export.json`` before the folders are written: sizes, pooling, prompts, the stacks that reproduce it."""
    from models.embedder import CONFIG_NAME
    from models.tokenization import INPUT_NORMALIZATION
    from serve.stacks import ST_POOLING, stack_support

    prompts = {side: model.sides[side].prompt() for side in model.side_names}
    return {
        "sides": {side: None for side in model.side_names},  # side -> its sentence-transformers folder, once written
        "embedding_dim": model.embedding_dim,
        "matryoshka_dims": model.matryoshka_dims,
        "max_seq_length": max_seq_length,
        "pooling": ST_POOLING[model.pooling],
        "bidirectional": model.bidirectional,
        "prompts": prompts,  # each side's task instruction, before every text (sentence-transformers: default prompt)
        "stacks": stack_support(model.pooling, model.bidirectional, prompts),  # who reproduces it (serve/stacks.py)
        "normalize": True,
        "input_normalization": INPUT_NORMALIZATION,  # what every reader does to a text (tokenizer files say it too)
        # --verify also compares against the unmerged adapter model when the source was a LoRA checkpoint
        "source": {
            "checkpoint": str(source.resolve()),
            "lora": json.loads((source / CONFIG_NAME).read_text()).get("lora"),
        },
    }


def write_sentence_transformer(model: DecoderEmbedder, side: str, folder: Path, max_seq_length: int) -> None:
    """Write one side of ``model`` as a sentence-transformers folder whose tokenizer adds the delimiters."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from serve.portable import make_portable
    from serve.stacks import ST_POOLING

    spec = model.sides[side]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "transformer"
        model.backbone_for(side).save_pretrained(hf_dir)
        model.tokenizer.save_pretrained(hf_dir)
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)  # a copy: the model's own tokenizer is left alone
        vocab = tokenizer.get_vocab()
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{spec.open_token} $A {spec.close_token}",
            special_tokens=[(spec.open_token, vocab[spec.open_token]), (spec.close_token, vocab[spec.close_token])],
        )
        tokenizer.padding_side = "right"  # positions then equal the model's mask-derived positions
        # sentence-transformers renders text through a tokenizer's chat template when it has one
        # (instruct decoders such as SmolLM2-Instruct do); the embedding input is the bare text.
        tokenizer.chat_template = None
        for leftover in hf_dir.glob("chat_template.*"):
            leftover.unlink()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(hf_dir)

        transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
        pooling = Pooling(model.hidden_size, pooling_mode=ST_POOLING[model.pooling])
        modules: list[torch.nn.Module] = [transformer, pooling]
        if model.projection is not None:
            dense = Dense(model.hidden_size, model.embedding_dim, bias=False, activation_function=torch.nn.Identity())
            with torch.no_grad():
                dense.linear.weight.copy_(model.projection.weight)
            modules.append(dense)
        modules.append(Normalize())
        prompt = spec.prompt()  # the side's task instruction: applied to every text by default, as we do
        prompts = {"prompts": {side: prompt}, "default_prompt_name": side} if prompt else {}
        SentenceTransformer(modules=modules, device="cpu", **prompts).save(str(folder))
    make_portable(folder, max_seq_length, model.embedding_dim, model.matryoshka_dims)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.export", description="Export a checkpoint for serving.")
    parser.add_argument("checkpoint", help="checkpoint folder, or a training run folder (newest checkpoint)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--max-seq-length", type=int, default=512, help="tokens per input, delimiters included")
    parser.add_argument("--onnx", action="store_true", help="also write an ONNX graph per side (OUT/onnx/<side>)")
    parser.add_argument("--onnx-int8", action="store_true", help="--onnx plus a dynamically quantized int8 graph")
    parser.add_argument("--verify", action="store_true", help="then compare every runtime on probes (exit 1 if off)")
    parser.add_argument("--tolerance", type=float, default=None, help="--verify: max abs difference allowed")
    parser.add_argument("--no-side-stack", action="store_true", help="--verify: skip the older stack's side venv")
    parser.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                        help="an eval/run.py results.json: its scores go in the model cards (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    for path in args.results:
        if not Path(path).is_file():
            parser.error(f"--results {path}: file not found")
    info = export(args.checkpoint, args.out, args.max_seq_length, onnx=args.onnx, onnx_int8=args.onnx_int8,
                  results=args.results)  # fmt: skip
    print(json.dumps(info, indent=2))
    if args.verify:
        from serve.verify import DEFAULT_TOLERANCE, run_verify

        tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
        if not run_verify(args.out, tolerance, side_stack=not args.no_side_stack):
            sys.exit(1)


if __name__ == "__main__":
    main()

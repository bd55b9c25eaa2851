"""The model card (``README.md``) of each exported sentence-transformers folder, and the audit copied beside it.

A card says what a user of the folder needs before trusting its numbers: the base model, the
side and its delimiters, the pooling, sizes, the training sets (from the checkpoint's
``train_config.yaml``, with their manifests' status), the steps, any measured scores (the
checkpoint's last logged metrics and ``results.json`` files passed to the export) and the
contamination audit (``contamination.json`` of ``python -m pairdata audit``), or a line saying
that none was run. Hugging Face's hub reads the YAML header (library, pipeline, base model).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pairdata.audit import REPORT as AUDIT_FILE
from pairdata.audit import markdown_table

CARD = "README.md"


def copy_audit(checkpoint: Path, targets: Sequence[Path]) -> dict[str, Any] | None:
    """Copy the checkpoint's ``contamination.json`` into every target folder; return it (``None``: not audited)."""
    source = checkpoint / AUDIT_FILE
    if not source.is_file():
        return None
    for target in targets:
        shutil.copyfile(source, target / AUDIT_FILE)
    return json.loads(source.read_text(encoding="utf-8"))


def _training(checkpoint: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    from pairdata.provenance import read_train_config, training_sets

    try:
        config = read_train_config(checkpoint)
    except FileNotFoundError:
        return None, []
    return config, [entry.to_dict() for entry in training_sets(config)]


def _scores(checkpoint: Path, results_files: Sequence[Path]) -> list[tuple[str, str, float]]:
    """``(where, key, value)``: the checkpoint's last logged metrics, then every results.json's scores."""
    rows: list[tuple[str, str, float]] = []
    state_file = checkpoint / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        for key, value in (state.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append((f"training log, step {state.get('step')}", key, float(value)))
    for path in results_files:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        for key, value in (record.get("scores") or {}).items():
            rows.append((f"{record.get('benchmark')} ({Path(path).name})", key, float(value)))
    return rows


def model_card(
    side: str,
    info: Mapping[str, Any],
    checkpoint: Path,
    open_token: str,
    close_token: str,
    audit: Mapping[str, Any] | None,
    results_files: Sequence[Path] = (),
) -> str:
    """The Markdown card of one side's sentence-transformers folder."""
    config, sets = _training(checkpoint)
    lines = _summary(side, info, checkpoint, config, open_token, close_token)
    lines += ["## Training data", ""]
    if not sets:
        lines.append("Unknown: the checkpoint holds no `train_config.yaml`.")
    else:
        lines += ["| set | kind | location | manifest |", "|---|---|---|---|"]
        for entry in sets:
            status = entry["manifest_status"] + (f" ({entry['reason']})" if entry.get("reason") else "")
            lines.append(f"| {entry['name']} | {entry['kind']} | `{entry['location']}` | {status} |")
    lines += ["", "## Scores", ""]
    scores = _scores(checkpoint, results_files)
    if scores:
        lines += ["| measured in | score | value |", "|---|---|---:|"]
        lines += [f"| {where} | {key} | {value:.4g} |" for where, key, value in scores]
    else:
        lines.append("None recorded. Score it with `python eval/run.py source=checkpoint source.checkpoint_dir=...`.")
    lines += ["", "## Contamination audit", ""]
    if audit is None:
        lines.append(f"Not audited: run `python -m pairdata audit {checkpoint}` before exporting.")
    else:
        lines += [markdown_table(audit), "", f"Full report: `{AUDIT_FILE}` beside this card."]
    return "\n".join(lines) + "\n"


POOLING_WORDS = {
    "lasttoken": "the last token (the closing delimiter)",
    "mean": "the mean over every token, delimiters included",
    "weightedmean": "a position-weighted mean (the i-th token weighs i)",
}


def _summary(
    side: str,
    info: Mapping[str, Any],
    checkpoint: Path,
    config: dict[str, Any] | None,
    open_token: str,
    close_token: str,
) -> list[str]:
    """The card's YAML header, title, facts table and usage."""
    model_config = (config or {}).get("model") or {}
    trainer = (config or {}).get("trainer") or {}
    base = model_config.get("pretrained") or "unknown"
    name = (config or {}).get("name") or checkpoint.parent.parent.name or checkpoint.name
    prompt = (info.get("prompts") or {}).get(side)
    instruction = f"`{prompt!r}` before every text (the folder's default prompt)" if prompt else "none"
    header = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
              "tags: [sentence-transformers, feature-extraction, cpt-embeddings]"]  # fmt: skip
    if "/" in str(base) and not Path(str(base)).expanduser().exists():
        header.append(f"base_model: {base}")
    header.append("---")
    matryoshka = info.get("matryoshka_dims")
    sizes = ", ".join(map(str, matryoshka)) if matryoshka else "none (trained at full size only)"
    lora = info["source"].get("lora")
    tuning = f"LoRA {json.dumps(lora)}" if lora else "all weights or the top blocks (see the training config)"
    return [
        *header,
        "",
        f"# {name}: the `{side}` side",
        "",
        "A contrastively trained embedding model (cpt-text recipe) exported by `python -m serve.export`. "
        f"The tokenizer wraps every input as `{open_token} text {close_token}`; the embedding pools the last "
        f"layer's states ({POOLING_WORDS.get(info.get('pooling', 'lasttoken'), info.get('pooling'))}), L2-normalised.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| side | `{side}` (of {', '.join(f'`{s}`' for s in info['sides'])}) |",
        f"| embedding size | {info['embedding_dim']} |",
        f"| Matryoshka sizes | {sizes} |",
        f"| max sequence length | {info['max_seq_length']} tokens (longer inputs cut, closing delimiter kept) |",
        "| input normalisation | outer whitespace stripped; special-token text in an input is plain text |",
        f"| pooling | {POOLING_WORDS.get(info.get('pooling', 'lasttoken'), info.get('pooling'))}, normalised |",
        f"| task instruction | {instruction} |",
        f"| training steps | {trainer.get('steps', 'unknown')} x {trainer.get('batch_size', '?')} pairs |",
        f"| fine-tuning | {tuning} |",
        f"| source checkpoint | `{info['source']['checkpoint']}` |",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("PATH/TO/THIS/FOLDER")',
        'embeddings = model.encode(["first text", "second text"])  # delimiters are added by the tokenizer',
        "```",
        "",
    ]

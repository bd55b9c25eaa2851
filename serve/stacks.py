"""Which serving stacks reproduce an export, and how: the one place that knows each stack's limits.

An export's vectors depend on the checkpoint's pooling, on whether its embedding pass attends both
ways, and on the task instructions its sides put before their inputs. Each stack reads the
sentence-transformers folders of :mod:`serve.export` its own way (from the stacks' sources, 2026):

- sentence-transformers (3.x to 6.x) and infinity-emb (through sentence-transformers 3.4) run any
  Pooling mode; sentence-transformers applies the folder's ``default_prompt_name``, infinity-emb no prompt;
- TEI pools ``cls``, ``mean``, ``splade`` or ``last_token`` (no weighted mean), applies a prompt only
  when launched with ``--default-prompt-name``, and runs this Llama-family decoder only on CUDA, in fp16;
- vLLM's pooling runner pools ``LAST`` or ``MEAN`` (no weighted mean), applies no prompt, and runs
  fp32 models in fp16 unless ``--dtype float32``;
- none of them can run a decoder bidirectionally from a stock ``config.json``: they would embed it
  causally, silently. Such an export writes no sentence-transformers folders; our server runs it.

:func:`stack_support` turns that into ``export.json``'s ``stacks``: per stack, ``exact`` (same vectors
to float rounding, with the flags in ``how``), ``close`` (same model, another precision) or
``refused`` (with ``why``), and :mod:`serve.verify` skips a refused stack with its reason.
"""

from __future__ import annotations

from typing import Any

ST_POOLING = {"last_token": "lasttoken", "mean": "mean", "weighted_mean": "weightedmean"}
STACKS = ("our server", "sentence-transformers", "infinity-emb", "tei", "vllm")


def stack_support(pooling: str, bidirectional: bool, prompts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per stack: ``{"status": exact | close | refused, "how": ..., "why": ...}`` for an export with these options."""
    prompted = sorted(side for side, prompt in prompts.items() if prompt)
    support = {
        "our server": {"status": "exact", "how": "python -m serve --model OUT (torch or --backend onnx)"},
        "sentence-transformers": {"status": "exact", "how": "SentenceTransformer(OUT/sentence-transformers/<side>)"},
        "infinity-emb": {"status": "exact", "how": "infinity_emb v2 --model-id OUT/sentence-transformers/<side>"},
        "tei": {"status": "close", "how": "CUDA in fp16 only for this Llama family: close to fp32, not equal"},
        "vllm": {"status": "exact", "how": "vllm serve OUT/sentence-transformers/<side> --runner pooling --dtype float32"},
    }
    if bidirectional:
        why = ("the checkpoint attends both ways (model.bidirectional); this stack would run the decoder causally "
               "from its config.json")  # fmt: skip
        for stack in STACKS[1:]:
            support[stack] = {"status": "refused", "why": why}
        support["our server"]["how"] = "python -m serve --model OUT (torch backend)"
        return support
    if pooling == "weighted_mean":
        for stack, pools in (("tei", "cls, mean, splade, last_token"), ("vllm", "LAST, MEAN, CLS")):
            support[stack] = {"status": "refused", "why": f"no position-weighted mean pooling (it pools {pools})"}
    if prompted:
        why = f"applies no prompt: sides {prompted} need their task instruction before every text (send prompt + text)"
        support["infinity-emb"] = {"status": "refused", "why": why, "sides": prompted}
        if support["vllm"]["status"] != "refused":
            support["vllm"] = {"status": "refused", "why": why, "sides": prompted}
        if support["tei"]["status"] != "refused":
            support["tei"]["how"] += "; launch with --default-prompt-name <side>"
    return support


def refused(support: dict[str, dict[str, Any]], stack: str, side: str | None = None) -> str | None:
    """Why ``stack`` cannot reproduce the export (or its ``side``: a refusal may name only some sides), or ``None``."""
    entry = support.get(stack, {})
    if entry.get("status") != "refused" or (side is not None and side not in entry.get("sides", [side])):
        return None
    return entry["why"]

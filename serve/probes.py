"""The probe texts an export is checked on: by ``--verify`` (:mod:`serve.verify`) on every runtime, and by the
ONNX export (:mod:`serve.onnx_export`) against torch.

The probes hold what makes stacks disagree when they read an export differently: outer whitespace
and line breaks (sentence-transformers <= 4 and infinity strip them, newer stacks only because the
export's tokenizer says so), special-token text (``<|endoftext|>``, a side's delimiters spelled out;
plain text for us and OpenAI, a special token for a tokenizer left as it was trained), texts longer
than 512 tokens (truncation must keep the closing delimiter) and unicode. Every runtime gets the
same strings: a runtime that disagrees on any of them fails the check.
"""

from __future__ import annotations

from collections.abc import Mapping

LONG_TEXT = " ".join(
    f"Paragraph {i}: contrastive pre-training pulls paired texts together and pushes the rest of the batch apart."
    for i in range(60)
)  # about 1,200 tokens of SmolLM2: longer than any max_seq_length we export
PROBES: tuple[str, ...] = (
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    LONG_TEXT,
    LONG_TEXT + "\n",
    "Grüße aus Köln: naïve café, 東京タワー, مرحبا بالعالم, Ελληνικά, 🤖🚀 👩‍💻",
    'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n    return a + b\n',
    "public static <T extends Comparable<T>> T max(List<T> xs) { return Collections.max(xs); }",
    "   leading and trailing whitespace\t\n",
    "a document that ends with a newline\n",
    "\n\nline breaks\r\naround and inside\u3000",
    "the text <|endoftext|> inside a document is plain text",
    "<|im_start|>user\nhello<|im_end|>",
)


def probes_for(sides: Mapping[str, Mapping[str, str]]) -> tuple[str, ...]:
    """:data:`PROBES` plus, per side, a text spelling out its delimiters (``sides`` as in ``embedder_config.json``)."""
    spelled = tuple(
        f"{side['open_token']} spelled-out delimiters of {name} {side['close_token']}" for name, side in sides.items()
    )
    return PROBES + spelled

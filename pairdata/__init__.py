"""Real text and code pairs for training and evaluation: readers, builders and loaders.

Named ``pairdata`` so it never shadows Hugging Face's ``datasets`` package.
"""

from pairdata.errors import DataFormatError
from pairdata.pairs import Pair, load_jsonl_pairs

__all__ = ["DataFormatError", "Pair", "load_jsonl_pairs"]

from pairdata.loading import load_built_pairs  # noqa: E402  (built sets, by name)

__all__ += ["load_built_pairs"]

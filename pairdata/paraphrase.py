"""Real positive pairs available offline before any build: paraphrases from SentEval-layout files.

STS-B *train* pairs rated highly similar and MRPC *train* paraphrases. Their test splits are
evaluation data and are never read here.
"""

from __future__ import annotations

from pathlib import Path

from pairdata.pairs import Pair
from pairdata.senteval import read_mrpc, read_sts_benchmark


def senteval_paraphrase_pairs(data_root: str, stsb_min_score: float = 4.0, include_mrpc: bool = True) -> list[Pair]:
    """Paraphrase pairs from STS-B train (score >= ``stsb_min_score``) and MRPC train positives.

    Args:
        data_root: a folder in SentEval's ``data/downstream`` layout.
        stsb_min_score: keep STS-B pairs rated at least this similar (0-5 scale).
        include_mrpc: also use MRPC train pairs labelled as paraphrases.

    Returns:
        Pairs with exact duplicates removed, in file order.
    """
    root = Path(data_root).expanduser()
    candidates = [Pair(a, b) for a, b, score in read_sts_benchmark(root, "train") if score >= stsb_min_score]
    if include_mrpc:
        candidates += [Pair(a, b) for a, b, label in read_mrpc(root, "train") if label == 1]
    return list(dict.fromkeys(candidates))

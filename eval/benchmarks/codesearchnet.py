"""CodeSearchNet code search: MRR (x100) of the true code among 999 distractors, per language.

Protocol (CodeBERT's, Feng et al., 2020, arXiv 2002.08155; used by the cpt paper): the test
records of a language are shuffled as CodeBERT's ``process_data.py`` shuffles them
(``np.random.seed(0); np.random.shuffle(indices)``) and cut into consecutive groups of 1,000; each
docstring (role ``text``) ranks the 1,000 codes of its group (role ``code``): its own plus 999
distractors. The rank counts every code scoring at least as high as the true one (ties count
against), and MRR is the mean of 1/rank. A final incomplete group is dropped, as CodeBERT does,
unless it is the only group (small data): then it is used with a warning and its distractor count
is reported. The shuffle matters: test files list functions file by file, so consecutive groups in
file order would pit each function against its own neighbours (``shuffle_seed=None`` does that).

Files per language, first found wins:
- the official release: ``<root>/<lang>/final/jsonl/test/*.jsonl.gz``;
- this project's data builder: ``<root>/code-<lang>/test.jsonl[.gz]``;
- CodeBERT's preprocessed files: ``<root>/<lang>/test.jsonl[.gz]``.
Records are CodeSearchNet-jsonl: token-list fields are joined with spaces (line breaks inside a
token become spaces, CodeBERT's ``format_str``), string fields used as is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.report import Score
from pairdata.errors import DataFormatError
from pairdata.pairs import iter_jsonl

logger = logging.getLogger(__name__)

LANGUAGES = ("go", "java", "javascript", "php", "python", "ruby")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def _field_text(record: dict, field: str, path: Path, line: int) -> str:
    value = record.get(field)
    if isinstance(value, list) and all(isinstance(token, str) for token in value):
        value = " ".join(_LINE_BREAKS.sub(" ", token) for token in value)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, f"field {field!r} must be a non-empty string or token list", line)
    return value


def group_mrr(text_vectors: np.ndarray, code_vectors: np.ndarray) -> np.ndarray:
    """Reciprocal rank of code i for text i within one group (ties count against). Returns (G,)."""
    scores = text_vectors @ code_vectors.T  # (G, G)
    true = np.diag(scores)[:, None]  # (G, 1)
    ranks = np.sum(scores >= true, axis=1)  # (G,), >= 1 since the true code scores itself
    return 1.0 / ranks


def codebert_order(count: int, seed: int | None) -> np.ndarray:
    """``np.random.seed(seed); np.random.shuffle(np.arange(count))`` without touching the global RNG.

    ``RandomState(seed)`` is the generator behind ``np.random.seed``, so this is CodeBERT's permutation.
    """
    indices = np.arange(count)
    if seed is not None:
        np.random.RandomState(seed).shuffle(indices)
    return indices


class CodeSearchNetBenchmark:
    """Args:
    data_root: folder holding the languages (see the module docstring for the layouts).
    languages: any of ``go java javascript php python ruby``.
    split: file split (``test``).
    group_size: codes ranked per query, the true one included (1,000: 999 distractors).
    query_field: record field for the query (``docstring_tokens``, as CodeBERT; or ``docstring``).
    code_field: record field for the code (``code_tokens``, as CodeBERT; or ``code``).
    shuffle_seed: seed of CodeBERT's shuffle before grouping (0, as CodeBERT); ``None`` keeps file order.
    max_groups: score only the first this many groups per language (after the shuffle): a cheaper
        estimate for slow models on a CPU, reported in the details; ``None`` scores every group.
    """

    name = "codesearchnet"

    def __init__(
        self,
        data_root: str,
        languages: Sequence[str] = LANGUAGES,
        split: str = "test",
        group_size: int = 1000,
        query_field: str = "docstring_tokens",
        code_field: str = "code_tokens",
        shuffle_seed: int | None = 0,
        max_groups: int | None = None,
        task: str | None = None,
    ) -> None:
        unknown = [language for language in languages if language not in LANGUAGES]
        if unknown:
            raise ValueError(f"unknown languages {unknown}; expected some of {LANGUAGES}")
        if group_size < 2:
            raise ValueError(f"group_size={group_size} must be >= 2")
        if max_groups is not None and max_groups < 1:
            raise ValueError(f"max_groups={max_groups} must be >= 1 or null")
        self.data_root = resolve_data_path(data_root)
        self.languages = list(languages)
        self.split = split
        self.group_size = group_size
        self.query_field = query_field
        self.code_field = code_field
        self.shuffle_seed = shuffle_seed
        self.max_groups = max_groups
        self.task = task

    def files(self, language: str) -> list[Path]:
        root = self.data_root
        official = sorted((root / language / "final" / "jsonl" / self.split).glob("*.jsonl.gz"))
        if official:
            return official
        for folder in (root / f"code-{language}", root / language):
            for name in (f"{self.split}.jsonl", f"{self.split}.jsonl.gz"):
                if (folder / name).is_file():
                    return [folder / name]
        raise DataFormatError(
            root,
            f"no {self.split} file for {language}: expected {language}/final/jsonl/{self.split}/*.jsonl.gz, "
            f"code-{language}/{self.split}.jsonl[.gz] or {language}/{self.split}.jsonl[.gz]",
        )

    def load(self, language: str) -> tuple[list[str], list[str], list[Path]]:
        texts, codes = [], []
        files = self.files(language)
        for path in files:
            for line, record in iter_jsonl(path):
                texts.append(_field_text(record, self.query_field, path, line))
                codes.append(_field_text(record, self.code_field, path, line))
        return texts, codes, files

    def order(self, count: int) -> np.ndarray:
        """Record indices in evaluation order: CodeBERT's seeded shuffle, or file order without a seed."""
        return codebert_order(count, self.shuffle_seed)

    def run(self, context: Context) -> BenchmarkOutput:
        encoder = context.require_dense(self.name).for_task(self.task)
        scores: list[Score] = []
        files = {}
        details = {}
        for language in self.languages:
            texts, codes, language_files = self.load(language)
            order = self.order(len(texts))
            texts, codes = [texts[i] for i in order], [codes[i] for i in order]
            files.update({f"{language}/{path.name}": path for path in language_files})
            n_groups = len(texts) // self.group_size
            size = self.group_size
            if n_groups == 0:
                logger.warning(
                    "%s: only %d test pairs, fewer than a group of %d; ranking among all (%d distractors)",
                    language,
                    len(texts),
                    self.group_size,
                    len(texts) - 1,
                )
                n_groups, size = 1, len(texts)
            complete_groups = n_groups
            if self.max_groups is not None:
                n_groups = min(n_groups, self.max_groups)
            used = n_groups * size
            text_vectors = encoder.encode(texts[:used], "text", f"codesearchnet/{language}/text")
            code_vectors = encoder.encode(codes[:used], "code", f"codesearchnet/{language}/code")
            reciprocal = np.concatenate(
                [
                    group_mrr(text_vectors[g * size : (g + 1) * size], code_vectors[g * size : (g + 1) * size])
                    for g in range(n_groups)
                ]
            )
            value = 100 * float(reciprocal.mean())
            scores.append(Score(f"codesearchnet/{language}/mrr", value, main=True))
            details[language] = {
                "pairs": len(texts),
                "queries": used,
                "groups": n_groups,
                "groups_available": complete_groups,
                "distractors": size - 1,
                "shuffle_seed": self.shuffle_seed,
            }
            logger.info("%s: MRR %.2f over %d queries", language, value, used)
        if len(self.languages) > 1:
            # "average" is over the six languages (what references mean); a subset is named apart.
            label = "average" if sorted(self.languages) == sorted(LANGUAGES) else "average_subset"
            scores.append(Score(f"codesearchnet/{label}/mrr", float(np.mean([s.value for s in scores]))))
        return BenchmarkOutput(scores=scores, data_files=files, details=details)

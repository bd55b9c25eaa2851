"""Evaluation harnesses (STS, BEIR, SentEval, MTEB) that score any model source against references.

Entry point: ``python eval/run.py benchmark=beir source=minilm`` (see ``eval/run.py`` and
``docs/benchmarks.md``). Modules:

- ``eval.sources``: model sources (sentence-transformers/HF folder, our checkpoints, an
  OpenAI-compatible endpoint, BM25) behind one ``encode(texts, role)`` interface.
- ``eval.data``: BEIR-layout readers and file hashing.
- ``eval.metrics``: retrieval metrics (pytrec_eval plus a properly cut MRR@k) and Spearman.
- ``eval.search``: exact dense top-k search by chunked matmul.
- ``eval.cache``: the optional embedding cache per (model, dataset).
- ``eval.report``: scores, references, the results table and atomic JSON/markdown output.
- ``eval.benchmarks``: one module per benchmark.

Heavy libraries (torch, sentence-transformers, mteb, sklearn) are imported lazily inside functions.
"""

"""The eval harness pointed at the server scores the same as the local checkpoint."""

from __future__ import annotations

import numpy as np

from serve.app import Settings, create_app
from tests.conftest import TINY_LLAMA, TWO_SIDES
from tests.serve.conftest import MAX_LENGTH, LoopbackServer, texts_for_retrieval


def test_openai_source_on_the_server_matches_checkpoint_source(tmp_path):
    import openai

    from eval.metrics import retrieval_scores
    from eval.search import exact_search
    from eval.sources import CheckpointSource, OpenAISource
    from models import DecoderEmbedder

    DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).save_pretrained(tmp_path / "ckpt")
    queries, docs, qrels = texts_for_retrieval()
    server = LoopbackServer(create_app(Settings(model=str(tmp_path / "ckpt"), name="tiny", max_length=MAX_LENGTH)))
    server.start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
        remote = OpenAISource(
            "tiny-query",
            role_models={"query": "tiny-query", "document": "tiny-doc"},
            batch_size=7,
            show_progress=False,
            client=client,
        )
        served = {role: remote.encode(items, role) for role, items in (("query", queries), ("document", docs))}
    finally:
        server.stop()
    local_source = CheckpointSource(str(tmp_path / "ckpt"), max_length=MAX_LENGTH, show_progress=False)
    local = {role: local_source.encode(items, role) for role, items in (("query", queries), ("document", docs))}
    for role in local:
        np.testing.assert_allclose(served[role], local[role], atol=1e-5)

    def scores(vectors):
        query_ids = [f"q{i}" for i in range(len(queries))]
        doc_ids = [f"d{i}" for i in range(len(docs))]
        run = exact_search(vectors["query"], vectors["document"], query_ids, doc_ids, top_k=10)
        return retrieval_scores(qrels, run, ["ndcg@10", "mrr@10"])[0]

    remote_scores, local_scores = scores(served), scores(local)
    assert remote_scores.keys() == local_scores.keys()
    for metric, value in local_scores.items():
        assert abs(remote_scores[metric] - value) < 1e-6, metric

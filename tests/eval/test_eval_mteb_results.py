"""Results in mteb's format: written by every run, loaded back with mteb itself; training data from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import compose

from eval.mteb_results import task_scores
from eval.report import Score


def test_scores_map_to_mteb_tasks_and_other_protocols_are_listed() -> None:
    scores = [
        Score("beir/arguana/ndcg@10", 41.5, main=True),
        Score("beir/arguana/recall@100", 90.0),
        Score("beir/arguana/ndcg@10@64", 30.0),  # another embedding size: MTEB has one result per task
        Score("beir/average_subset/ndcg@10", 41.5),
        Score("beir/my-folder/ndcg@10", 12.0, main=True),  # no MTEB task of that name
        Score("sts/SICK-R/spearman", 80.0, main=True),
        Score("sts/SICK-R/pearson", 85.0),
        Score("codesearchnet/python/mrr", 60.0, main=True),
    ]
    converted, not_converted = task_scores("beir", scores, {})
    by_task = {entry.task: entry.scores for entry in converted}
    assert by_task["ArguAna"] == {"test": {"default": {"ndcg_at_10": 0.415, "recall_at_100": 0.9, "main_score": 0.415}}}
    assert by_task["SICK-R"]["test"]["default"] == {"cosine_spearman": 0.8, "cosine_pearson": 0.85, "main_score": 0.8}
    assert not_converted == ["beir/my-folder/ndcg@10", "codesearchnet/python/mrr"]


def test_a_run_writes_task_results_that_mteb_loads_back(tiny_beir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    from mteb.cache import ResultCache
    from mteb.results import TaskResult

    from eval.run import run

    out = tmp_path / "out"
    overrides = ["source=bm25", f"benchmark.data_root={tiny_beir.parent}", "show_progress=false", "plot=false"]
    record = run(compose([*overrides, f"output_dir={out}"]))
    folder = Path(record["mteb"]["folder"])
    assert folder == out / "mteb" / "results" / "local__bm25s" / record["mteb"]["model_revision"]
    loaded = TaskResult.from_disk(folder / "ArguAna.json")
    assert loaded.task_name == "ArguAna"
    assert loaded.get_score() == pytest.approx(record["scores"]["beir/arguana/ndcg@10"] / 100, abs=1e-6)

    benchmark_results = ResultCache(out / "mteb").load_results(
        models=["local/bm25s"], tasks=["ArguAna"], include_remote=False
    )
    (model_result,) = benchmark_results.model_results
    assert model_result.model_name == "local/bm25s"
    (task_result,) = model_result.task_results
    assert task_result.scores["test"][0]["recall_at_100"] == pytest.approx(0.75)
    meta = json.loads((folder / "model_meta.json").read_text())
    assert meta["n_parameters"] == 0 and meta["training_datasets"] == []

    # A second run into the same folder replaces the result set whole.
    run(compose([*overrides, f"output_dir={out}", "benchmark.metrics=[ndcg@10]"]))
    again = json.loads((folder / "ArguAna.json").read_text())["scores"]["test"][0]
    assert "recall_at_100" not in again and not list(out.glob(".mteb*"))


def test_checkpoint_model_meta_names_its_training_sets(tiny_beir: Path, tmp_path: Path, tiny_embedder) -> None:
    from eval.run import run

    checkpoint = tmp_path / "step-000002"
    tiny_embedder.save_pretrained(checkpoint)
    data_dir = tmp_path / "pairdata"
    (data_dir / "text-search").mkdir(parents=True)
    (data_dir / "text-search" / "manifest.json").write_text(json.dumps({"kind": "text-search", "counts": {"pairs": 9}}))
    (checkpoint / "train_config.yaml").write_text(
        "model: {pretrained: null}\n"
        "data:\n  _target_: pairdata.trainsets.mixture\n  datasets:\n"
        f"    text-search: {{_target_: pairdata.trainsets.built, name: text-search, data_dir: {data_dir}}}\n"
        f"    code-go: {{_target_: pairdata.trainsets.built, name: code-go, data_dir: {data_dir}}}\n"
        "    paraphrases: {_target_: pairdata.trainsets.from_pairs, name: senteval-paraphrases,\n"
        "                  pairs: {_target_: pairdata.paraphrase.senteval_paraphrase_pairs, data_root: /data}}\n"
    )
    out = tmp_path / "out"
    record = run(
        compose(
            [
                "source=checkpoint",
                f"source.checkpoint_dir={checkpoint}",
                "source.max_length=32",
                f"benchmark.data_root={tiny_beir.parent}",
                "show_progress=false",
                "plot=false",
                f"output_dir={out}",
            ]
        )
    )
    meta = json.loads((Path(record["mteb"]["folder"]) / "model_meta.json").read_text())
    assert meta["name"] == "local/step-000002"
    assert meta["embed_dim"] == tiny_embedder.embedding_dim and meta["max_tokens"] == 32
    assert meta["n_parameters"] == sum(p.numel() for p in tiny_embedder.parameters())
    assert sorted(meta["training_datasets"]) == [
        "STSBenchmark",  # STS-B's train split is in the paraphrase pairs: mteb marks it not zero-shot
        "cpt-embeddings/code-go",
        "cpt-embeddings/senteval-paraphrases",
        "cpt-embeddings/text-search",
    ]
    status = {entry["name"]: entry["manifest_status"] for entry in record["model_metadata"]["training_sets"]}
    assert status == {"text-search": "found", "code-go": "missing", "senteval-paraphrases": "not-applicable"}


def test_mteb_benchmark_runs_keep_every_mteb_score_under_the_official_name() -> None:
    scores = [Score("mteb/arguana/ndcg_at_10", 40.0, main=True), Score("mteb/SciFact/ndcg_at_10", 60.0, main=True)]
    details = {"arguana": {"ndcg_at_10": 0.4, "map_at_100": 0.3}, "SciFact": {"ndcg_at_10": 0.6, "mrr_at_10": 0.5}}
    converted, not_converted = task_scores("mteb", scores, details)
    by_task = {entry.task: entry.scores["test"]["default"] for entry in converted}
    assert by_task == {
        "ArguAna": {"ndcg_at_10": 0.4, "map_at_100": 0.3, "main_score": 0.4},
        "SciFact": {"ndcg_at_10": 0.6, "mrr_at_10": 0.5, "main_score": 0.6},
    }
    assert not_converted == []

"""Hard-negative mining: the filters, exact search (against a brute-force reference on a tiny random model),
never a positive or a benchmark text, resume, the CLI (and the old ``pairdata mine`` pointing to it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval.mine import main
from eval.mining import DROP_REASONS, Encoder, MiningFilters, choose_negatives, load_encoder, mine
from eval.search import top_candidates
from pairdata.leakage import LeakageIndex
from pairdata.mining import load_mined
from tests.train.test_training import write_pairs


class WordEncoder(Encoder):
    """Bag of hashed words, L2-normalised: texts sharing words score high (a fast, readable stand-in)."""

    description = {"model": "word-hash", "kind": "test"}

    def _encode(self, texts, role):
        import xxhash

        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, xxhash.xxh32_intdigest(word.encode()) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def pair_set(tmp_path: Path, count: int = 60):
    import datasets

    rows = [json.loads(line) for line in write_pairs(tmp_path / "pairs.jsonl", count).open()]
    rows.append({"x": rows[0]["x"], "y": rows[1]["y"]})  # x0 has a second positive: never its negative
    return datasets.Dataset.from_list(rows)


def test_choose_negatives_applies_each_filter_and_counts_its_drops() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    candidates = np.arange(7)
    keys = np.array([10, 11, 12, 13, 14, 15, 16], dtype=np.uint64)
    rng = np.random.default_rng(0)

    def run(**options):
        drops = dict.fromkeys(DROP_REASONS, 0)
        filters = MiningFilters(**{"num_negatives": 3, **options})
        chosen, chosen_scores = choose_negatives(
            scores, candidates, keys, 0.85, np.array([11], np.uint64), filters, rng, drops
        )
        return chosen.tolist(), drops

    assert run() == ([0, 2, 3], {**dict.fromkeys(DROP_REASONS, 0), "positive": 1})
    assert run(range_min=1)[0] == [2, 3, 4]
    assert run(absolute_margin=0.1) == (
        [3, 4, 5],
        {**dict.fromkeys(DROP_REASONS, 0), "positive": 1, "absolute_margin": 2},
    )
    assert run(relative_margin=0.2)[0] == [4, 5, 6]  # <= 0.85 * 0.8 = 0.68
    assert run(max_score=0.65)[0] == [4, 5, 6]
    assert run(range_max=3)[0] == [0, 2, 3] and run(range_max=2)[0] == [0, 2]  # ranks counted without positives
    picked = {tuple(run(sampling="random")[0]) for _ in range(30)}
    assert len(picked) > 1 and all(set(p) <= {0, 2, 3, 4, 5, 6} for p in picked)


def test_top_candidates_is_exact_across_pool_chunks() -> None:
    generator = np.random.default_rng(1)
    queries, pool = generator.normal(size=(9, 8)), generator.normal(size=(50, 8))
    scores, index = top_candidates(queries, pool, depth=5, pool_chunk=7)
    expected = np.argsort(-(queries @ pool.T), axis=1)[:, :5]
    assert (index == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ pool.T, expected, 1), rtol=1e-5)


def test_mined_negatives_are_never_a_positive_of_the_same_x_nor_a_benchmark_text(tmp_path) -> None:
    dataset = pair_set(tmp_path)
    leakage = LeakageIndex()
    leaked = dataset[5]["y"]
    leakage.add(leaked)
    manifest = mine(dataset, WordEncoder(), tmp_path / "out", MiningFilters(num_negatives=3), leakage=leakage,
                    query_block=16, show_progress=False)  # fmt: skip
    mined = load_mined(str(tmp_path / "out"))
    assert mined.column_names == ["x", "y", "negatives"] and len(mined) == len(dataset)
    positives_of: dict[str, set[str]] = {}
    for row in dataset:
        positives_of.setdefault(row["x"], set()).add(row["y"])
    for row in mined:
        assert len(row["negatives"]) == 3
        assert not set(row["negatives"]) & (positives_of[row["x"]] | {row["x"]})
        assert leaked not in row["negatives"]
    counts = manifest["counts"]
    assert counts["rows"] == len(dataset) and counts["negatives"] == 3 * len(dataset) and counts["rows_short"] == 0
    assert manifest["pool"]["leaked_removed"] >= 1 and sum(counts["negative_scores"]) == counts["negatives"]
    # the hardest negative is the pool's best-scoring text that is not a positive (exact search)
    encoder = WordEncoder()
    pool = sorted({row["y"] for row in dataset} - {leaked})
    first = mined[0]
    scores = encoder.encode([first["x"]], "x") @ encoder.encode(pool, "y").T
    ranked = [pool[i] for i in np.argsort(-scores[0], kind="stable") if pool[i] not in positives_of[first["x"]]]
    assert first["negatives"][0] in ranked[:2]  # ties among equal scores may order either way


def test_an_interrupted_mining_run_resumes_to_the_same_output_and_refuses_other_settings(tmp_path) -> None:
    import pyarrow.parquet as pq

    dataset = pair_set(tmp_path)
    out = tmp_path / "out"
    mine(dataset, WordEncoder(), out, MiningFilters(num_negatives=2), query_block=16, show_progress=False)
    reference = [pq.read_table(p).to_pylist() for p in sorted((out / "parts").glob("*.parquet"))]
    (out / "manifest.json").unlink()
    (out / "parts" / "part-00002.parquet").unlink()
    (out / "embeddings" / "x.done").write_text("16")  # the x embeddings stopped after one chunk
    mine(dataset, WordEncoder(), out, MiningFilters(num_negatives=2), query_block=16, show_progress=False)
    assert [pq.read_table(p).to_pylist() for p in sorted((out / "parts").glob("*.parquet"))] == reference
    with pytest.raises(FileExistsError, match="other settings"):
        mine(dataset, WordEncoder(), out, MiningFilters(num_negatives=3), query_block=16, show_progress=False)


def test_an_unfinished_mining_folder_is_refused_as_training_data(tmp_path) -> None:
    (tmp_path / "parts").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished mining run"):
        load_mined(str(tmp_path))


def test_the_mine_command_with_a_checkpoint_writes_a_set_the_trainer_reads(tmp_path, tiny_embedder) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    checkpoint = tmp_path / "model"
    tiny_embedder.save_pretrained(checkpoint)
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "mined"
    code = main(["--model", str(checkpoint), "--data", str(data), "--out", str(out), "--num-negatives", "2",
                 "--range-min", "1", "--max-length", "32", "--no-benchmark-check", "--quiet"])  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder"]["kind"] == "cpt-embedder" and manifest["filters"]["range_min"] == 1
    assert manifest["command"].startswith("python -m eval.mine --model")
    cfg = compose_train_config(["data=mined", f"data.path={out}", "trainer.num_negatives=2"], tmp_path)
    dataset = instantiate(cfg.data)
    assert cfg.trainer.num_negatives == 2 and len(dataset) == 40
    assert all(len(row["negatives"]) == 2 for row in dataset)
    shutil.rmtree(out / "embeddings")  # the embeddings are a cache: training never reads them
    assert len(load_mined(str(out))) == 40


def test_a_bf16_mining_model_encodes_under_autocast_and_says_so(tmp_path, tiny_embedder) -> None:
    checkpoint = tmp_path / "model"
    tiny_embedder.save_pretrained(checkpoint)
    texts = ["def add(a, b): return a + b", "a longer sentence about hard negatives and mining them"]
    full = load_encoder(str(checkpoint), None, None, 32, 8)
    half = load_encoder(str(checkpoint), None, None, 32, 8, precision="bf16")
    assert "precision" not in full.description and half.description["precision"] == "bf16"
    exact, rounded = full.encode(texts, "y"), half.encode(texts, "y")
    assert rounded.dtype == np.float32
    assert 0 < np.abs(exact - rounded).max() and (exact * rounded).sum(axis=1).min() > 0.99
    with pytest.raises(ValueError, match="--precision must be fp32 or bf16"):
        load_encoder(str(checkpoint), None, None, 32, 8, precision="fp16")


def test_a_mining_sample_is_seeded_without_repeats_and_keeps_the_set_order(tmp_path) -> None:
    from pairdata.mining import sample_rows

    dataset = pair_set(tmp_path)
    first, again, other = (sample_rows(dataset, 20, seed) for seed in (0, 0, 1))
    rows = {row["x"] + "\t" + row["y"]: i for i, row in enumerate(dataset)}
    positions = [rows[row["x"] + "\t" + row["y"]] for row in first]
    assert len(set(positions)) == 20 and positions == sorted(positions)
    assert first["x"] == again["x"] and first["x"] != other["x"]
    assert len(sample_rows(dataset, 10_000, 0)) == len(dataset)
    with pytest.raises(ValueError, match="--sample must be at least 1"):
        sample_rows(dataset, 0, 0)


def test_data_code_mined_mixes_one_mined_set_per_language_with_its_negatives(tmp_path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    out = tmp_path / "mined"
    mine(pair_set(tmp_path), WordEncoder(), out, MiningFilters(num_negatives=2), show_progress=False)
    languages = ["python", "java", "go", "php", "ruby", "javascript"]
    paths = [f"data.datasets.code-{language}.path={out}" for language in languages]
    cfg = compose_train_config(["experiment=code", "data=code_mined", "trainer.num_negatives=2", *paths], tmp_path)
    mixture = instantiate(cfg.data)
    assert mixture.names == [f"code-{language}" for language in languages]
    assert all(len(row["negatives"]) == 2 for row in mixture.datasets["code-ruby"])


def brute_force_negatives(dataset, out: Path, filters: MiningFilters) -> list[list[str]]:
    """Each row's negatives from the run's own stored vectors: the full score matrix, sorted, filtered row by row."""
    import torch

    pool_texts = list(dict.fromkeys(dataset["y"]))  # distinct y's in first-occurrence order: the pool
    pool = torch.from_numpy(np.load(out / "embeddings" / "pool.npy").astype(np.float32))
    queries = torch.from_numpy(np.load(out / "embeddings" / "x.npy").astype(np.float32))
    scores = (queries @ pool.T).numpy()  # (rows, pool)
    index_of = {text: i for i, text in enumerate(pool_texts)}
    answers = []
    for row, (x, y) in enumerate(zip(dataset["x"], dataset["y"], strict=True)):
        positives = {other_y for other_x, other_y in zip(dataset["x"], dataset["y"], strict=True) if other_x == x}
        positive = float(scores[row, index_of[y]])
        ranked = [i for i in np.argsort(-scores[row], kind="stable") if pool_texts[i] not in positives | {x}]
        ranked = ranked[: filters.range_max]
        kept = []
        for rank, i in enumerate(ranked):
            value = scores[row, i]
            if rank < filters.range_min:
                continue
            if filters.absolute_margin is not None and value > positive - filters.absolute_margin:
                continue
            if filters.relative_margin is not None and value > positive * (1 - filters.relative_margin):
                continue
            if filters.max_score is not None and value > filters.max_score:
                continue
            kept.append(i)
        if filters.sampling == "random" and len(kept) > filters.num_negatives:
            draw = np.random.default_rng([filters.seed, row]).choice(len(kept), filters.num_negatives, replace=False)
            kept = [kept[j] for j in np.sort(draw)]
        answers.append([pool_texts[i] for i in kept[: filters.num_negatives]])
    return answers


@pytest.mark.parametrize(
    "options",
    [{}, {"range_min": 2, "absolute_margin": 0.01}, {"relative_margin": 0.001, "max_score": 0.999, "range_max": 20},
     {"sampling": "random", "seed": 3, "num_negatives": 3}],
    ids=["top", "skip-and-margin", "relative-and-max", "random"],
)  # fmt: skip
def test_mining_equals_a_brute_force_reference_on_a_tiny_random_model(tmp_path, tiny_embedder, options) -> None:
    from eval.mining import EmbedderEncoder

    dataset = pair_set(tmp_path, 50)
    encoder = EmbedderEncoder(tiny_embedder, ("query", "doc"), 32, 8, "tiny-random")
    filters = MiningFilters(**{"num_negatives": 4, **options})
    out = tmp_path / "mined"
    mine(dataset, encoder, out, filters, query_block=16, pool_chunk=7, show_progress=False)
    mined = load_mined(str(out))
    assert mined["x"] == dataset["x"] and mined["y"] == dataset["y"]
    assert mined["negatives"] == brute_force_negatives(dataset, out, filters)


def test_the_old_pairdata_mine_command_points_to_eval_mine(capsys) -> None:
    from pairdata.cli import main as pairdata_main

    assert pairdata_main(["mine", "--model", "ckpt", "--built", "text-search", "--out", "mined/r1"]) == 2
    assert "python -m eval.mine --model ckpt --built text-search --out mined/r1" in capsys.readouterr().err

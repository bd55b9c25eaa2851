"""The towers runner: its plan is valid, it orders train -> eval, and its report compares rows correctly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import towers  # noqa: E402


def plan_in(tmp_path: Path):
    plan = OmegaConf.load(REPO_ROOT / "configs" / "towers.yaml")
    plan.output_dir = str(tmp_path / "reports")
    plan.runs_dir = str(tmp_path / "runs")
    plan.cache_dir = None
    path = tmp_path / "towers.yaml"
    OmegaConf.save(plan, path)
    return towers.load_plan(path)


def test_the_shipped_plan_is_valid_and_names_real_experiments() -> None:
    plan = towers.load_plan(REPO_ROOT / "configs" / "towers.yaml")
    for tower, experiment in plan.towers.items():
        assert (REPO_ROOT / "configs" / "experiment" / f"{experiment}.yaml").is_file()
        assert towers.run_name(experiment).startswith(tower.split("_")[0])
        assert towers.experiment_steps(experiment) >= 1
    assert towers.run_name("similarity_matryoshka") == "similarity-matryoshka-smollm2-135m"


def test_every_trained_row_is_scored_against_the_untrained_one(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    jobs = {(job.row, job.benchmark): job for job in towers.evaluations(plan, None, None)}
    for tower in plan.own_benchmarks:
        trained = {benchmark for row, benchmark in jobs if row == tower}
        untrained = {benchmark for row, benchmark in jobs if row == "untrained"}
        assert trained and trained <= untrained
    search = jobs[("search", "arguana")]
    assert search.needs == ["search"]
    assert any(o.startswith("source.checkpoint_dir=") and "step-000060" in o for o in search.overrides)
    assert jobs[("untrained", "arguana")].needs == []


def test_bad_plan_rows_are_named(tmp_path: Path) -> None:
    plan = OmegaConf.load(REPO_ROOT / "configs" / "towers.yaml")
    plan.rows[1].trained = {"nosuch": "similarity"}
    OmegaConf.save(plan, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown benchmarks \\['nosuch'\\]"):
        towers.load_plan(tmp_path / "bad.yaml")


def test_report_fills_cells_and_says_which_tower_beats_the_untrained_decoder(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    scores = {
        ("untrained", "sts"): {"sts/STSBenchmark/spearman": 40.0, "sts/SICK-R/spearman": 50.0},
        ("similarity", "sts"): {"sts/STSBenchmark/spearman": 70.0, "sts/SICK-R/spearman": 45.0},
        ("untrained", "arguana"): {"beir/arguana/ndcg@10": 10.0},
        ("search", "arguana"): {"beir/arguana/ndcg@10": 30.0},
        ("similarity_served", "sts"): {"sts/STSBenchmark/spearman": 69.99, "sts/SICK-R/spearman": 45.0},
    }
    for (row, benchmark), values in scores.items():
        folder = Path(plan.output_dir) / row / benchmark
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"scores": values, "seconds": 12.0}))
    text = towers.report(plan)
    # columns: untrained, similarity, similarity_served, search (the rows with results), then the paper's
    assert "| sts/STSBenchmark/spearman | 40.00 | 70.00 | 69.99 | – | – |" in text
    assert "| beir/arguana/ndcg@10 | 10.00 | – | – | 30.00 | – |" in text
    assert "codesearchnet/go/mrr" not in text  # no row has it yet
    assert "Not measured yet: similarity tower, Matryoshka; code tower;" in text
    assert "sts/STSBenchmark/spearman 70.00 vs 40.00: beats" in text
    assert "sts/SICK-R/spearman 45.00 vs 50.00: does NOT beat" in text
    assert "beir/arguana/ndcg@10 30.00 vs 10.00: beats" in text
    assert "codesearchnet/average/mrr: not yet measured" in text
    assert "sts/STSBenchmark/spearman 69.99 served vs 70.00 from the checkpoint (-0.01)" in text


def test_dry_run_trains_before_it_evaluates_and_runs_nothing(tmp_path: Path, capsys) -> None:
    plan = plan_in(tmp_path)
    towers.main(["--plan", str(tmp_path / "towers.yaml"), "--dry-run", "--rows", "code"])
    out = capsys.readouterr().out
    train_at = out.index("train/contrastive.py experiment=code")
    eval_at = out.index("eval/run.py benchmark=codesearchnet")
    assert train_at < eval_at
    assert not Path(plan.output_dir).exists() and not Path(plan.runs_dir).exists()


def test_missing_pair_data_is_built_before_the_tower_trains(tmp_path: Path, capsys, monkeypatch) -> None:
    data_dir = tmp_path / "pairdata"
    monkeypatch.setenv("CPT_PAIRDATA_DIR", str(data_dir))
    (data_dir / "code-go").mkdir(parents=True)
    (data_dir / "code-go" / "manifest.json").write_text("{}")  # built: not rebuilt
    plan = plan_in(tmp_path)
    towers.main(["--plan", str(tmp_path / "towers.yaml"), "--dry-run", "--rows", "code"])
    out = capsys.readouterr().out
    build_ruby = out.index(f"-m pairdata build code --language ruby --data-dir {data_dir}")
    assert build_ruby < out.index("train/contrastive.py experiment=code")
    assert "--language go " not in out
    languages = ("go", "java", "javascript", "php", "python", "ruby")
    assert set(plan.pair_data.code) == {f"code-{lang}" for lang in languages}


def test_served_row_exports_serves_and_scores_over_http_without_the_cache(tmp_path: Path, capsys) -> None:
    plan = plan_in(tmp_path)
    plan.cache_dir = "/tmp/some-cache"
    job = next(j for j in towers.evaluations(plan, ["similarity_served"], ["sts"]))
    assert job.served == "similarity" and job.needs == ["similarity"]
    assert "source=openai" in job.overrides and "source.model=similarity" in job.overrides
    assert not any(o.startswith("cache_dir=") for o in job.overrides)


def test_serving_runs_the_exported_tower_behind_the_real_server(tmp_path: Path) -> None:
    import urllib.request

    import numpy as np

    from models import DecoderEmbedder
    from tests.conftest import TINY_LLAMA

    plan = plan_in(tmp_path)
    plan.serve_args = ["--max-length", 32, "--torch-threads", 1]
    model = DecoderEmbedder.build(None, {"text": {"open_token": "<|t|>", "close_token": "<|/t|>"}},
                                  random_config=TINY_LLAMA, seed=0)  # fmt: skip
    model.save_pretrained(towers.final_checkpoint(plan, "similarity"))
    with towers.serving(plan, "similarity", tmp_path / "logs", dry_run=False) as base_url:
        request = urllib.request.Request(
            f"{base_url}/embeddings",
            data=json.dumps({"input": ["a sentence", "another one"], "model": "similarity"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array([item["embedding"] for item in json.loads(response.read())["data"]])
    assert (Path(plan.runs_dir) / "exports" / "similarity" / "export.json").is_file()
    np.testing.assert_allclose(served, model.encode(["a sentence", "another one"], "text", max_length=32), atol=1e-5)


def test_a_benchmarks_checkpoint_overrides_replace_the_general_ones(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    plan.checkpoint_overrides = ["source.precision=bf16", "source.max_length=256"]
    plan.benchmark_checkpoint_overrides = {"arguana": ["source.max_length=128"]}
    arguana = next(j for j in towers.evaluations(plan, ["search"], ["arguana"]))
    sts = next(j for j in towers.evaluations(plan, ["similarity"], ["sts"]))
    assert "source.max_length=128" in arguana.overrides and "source.max_length=256" not in arguana.overrides
    assert "source.max_length=256" in sts.overrides and "source.precision=bf16" in arguana.overrides

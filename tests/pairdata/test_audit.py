"""The contamination audit: hand-counted overlaps, unknown sets reported as unknown, the CLI and its errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pairdata.cli import main

ARGUMENT = "school uniforms stop bullying because every pupil wears the same plain clothes to class each day"
PLAIN = "the weather was mild and the river was calm"


def _benchmarks(root: Path) -> Path:
    arguana = root / "beir" / "arguana"
    arguana.mkdir(parents=True)
    docs = [{"_id": "a", "title": "", "text": ARGUMENT}, {"_id": "b", "title": "", "text": "Rockets reach orbit."}]
    (arguana / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    sts = root / "senteval" / "STS"
    sts.mkdir(parents=True)
    (sts / "test.tsv").write_text(f"{PLAIN}\tA cat sat on the mat.\n")
    return root


def _checkpoint(tmp_path: Path, rows: list[dict], extra_sets: str = "") -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "train_config.yaml").write_text(
        "data:\n  _target_: pairdata.trainsets.mixture\n  datasets:\n"
        f"    mine: {{_target_: pairdata.trainsets.load_files, path: {pairs}, cache_dir: {tmp_path / 'arrow'}}}\n"
        + extra_sets
    )
    return checkpoint


def test_counts_exact_and_ngram_overlap_per_benchmark_file(tmp_path: Path) -> None:
    from pairdata.audit import audit

    rows = [
        # the STS sentence again, case and punctuation changed: an exact match
        {"x": "The weather was mild, and the river was calm!", "y": "something unrelated entirely here"},
        # 13 words of the ArguAna document inside a longer text: a 13-gram overlap, not exact
        {
            "x": "a new essay",
            "y": "Some say uniforms stop bullying because every pupil wears the same plain clothes to class",
        },
        {"x": "clean", "y": "clean too", "negatives": [PLAIN.upper(), "no overlap at all"]},
    ]
    checkpoint = _checkpoint(tmp_path, rows)
    path, report = audit(tmp_path / "run", _benchmarks(tmp_path / "bench"), tmp_path / "none", show_progress=False)
    assert path == checkpoint / "contamination.json" and json.loads(path.read_text()) == report
    by_file = {row["path"]: row for row in report["benchmarks"]}
    arguana, sts = by_file["beir/arguana/corpus.jsonl"], by_file["senteval/STS/test.tsv"]
    assert (arguana["texts"], arguana["exact"], arguana["ngram"]) == (2, 0, 1)
    assert arguana["training_texts_ngram"] == 1 and arguana["training_texts_exact"] == 0
    assert (sts["texts"], sts["exact"], sts["ngram"]) == (2, 1, 0)
    assert sts["training_texts_exact"] == 2  # the row's x and a negative
    assert report["complete"] is True
    assert report["training_sets"][0]["texts_scanned"] == 8


def test_an_unreadable_set_makes_the_audit_incomplete_not_clean(tmp_path: Path, capsys) -> None:
    missing = f"    built: {{_target_: pairdata.trainsets.built, name: code-go, data_dir: {tmp_path / 'nothing'}}}\n"
    _checkpoint(tmp_path, [{"x": "a b", "y": "c d"}], missing)
    bench = _benchmarks(tmp_path / "bench")
    code = tmp_path / "pairdata" / "code-go"
    code.mkdir(parents=True)
    with gzip.open(code / "test.jsonl.gz", "wt") as handle:
        record = {"docstring_summary": "Add two numbers.", "code": "def add(a, b): return a + b"}
        handle.write(json.dumps(record) + "\n")
    arguments = ["--benchmark-dir", str(bench), "--data-dir", str(tmp_path / "pairdata"), "--quiet"]
    assert main(["audit", str(tmp_path / "run"), *arguments]) == 0
    printed = capsys.readouterr().out
    assert "**Incomplete**" in printed and "code-go" in printed and "pairdata/code-go/test | 2 |" in printed
    report = json.loads((tmp_path / "run" / "checkpoints" / "step-000010" / "contamination.json").read_text())
    assert report["complete"] is False
    unknown = next(entry for entry in report["training_sets"] if entry["name"] == "code-go")
    assert unknown["status"] == "unknown" and "not built" in unknown["reason"]
    assert unknown["manifest_status"] == "missing"


def test_a_folder_without_a_training_config_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="neither a checkpoint .no train_config.yaml"):
        main(["audit", str(tmp_path), "--benchmark-dir", str(_benchmarks(tmp_path / "bench")), "--quiet"])

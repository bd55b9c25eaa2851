"""End-to-end code builds on tiny folders: CSN schema, repo-level splits, skipped files, resumability."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

import pairdata.code.build as code_build
from pairdata.code.build import build_code
from pairdata.code.docstrings import CSN_FIELDS
from pairdata.loading import load_built_pairs
from pairdata.pairs import Pair
from pairdata.store import is_complete, partial_dir
from tests.pairdata.conftest import folder_specs, write_repos

FRACTIONS = {"train": 0.6, "valid": 0.2, "test": 0.2}


def read_split(data_dir: Path, name: str, split: str) -> list[dict]:
    with gzip.open(data_dir / name / f"{split}.jsonl.gz", "rt") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.parametrize("language", ["python", "java", "go", "javascript", "php", "ruby"])
def test_build_each_language(tmp_path: Path, cache, language: str) -> None:
    folders = write_repos(tmp_path / "src", language, repos=5)
    manifest = build_code(
        language,
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=None,
        sources=folder_specs(folders),
        fractions=FRACTIONS,
        show_progress=False,
    )
    name = f"code-{language}"
    assert is_complete(tmp_path / "data", name)
    assert not partial_dir(tmp_path / "data", name).exists()
    records = [r for split in ("train", "valid", "test") for r in read_split(tmp_path / "data", name, split)]
    assert records, manifest["counts"]
    for record in records:
        assert set(CSN_FIELDS) <= set(record)
        assert record["language"] == language
        assert "tests/" not in record["path"]  # test files are skipped
        assert record["url"].endswith(f"#L{record['url'].split('#L')[1]}")
        assert len(record["docstring_tokens"]) >= 3
    # repository-level split: no repository in two splits
    repo_splits: dict[str, set[str]] = {}
    for record in records:
        repo_splits.setdefault(record["group"], set()).add(record["partition"])
    assert all(len(splits) == 1 for splits in repo_splits.values())
    assert {record["partition"] for record in records} == {"train", "valid", "test"}
    assert manifest["counts"]["splits"] == {s: len(read_split(tmp_path / "data", name, s)) for s in FRACTIONS}
    assert [source["name"] for source in manifest["sources"]] == [folder.name for folder in folders]
    assert all(len(source["content_sha256"]) == 64 for source in manifest["sources"])


def test_duplicates_across_repositories_are_removed(tmp_path: Path, cache) -> None:
    folders = write_repos(tmp_path / "src", "python", repos=3)
    copy = tmp_path / "src" / "fork"
    (copy / "src").mkdir(parents=True)
    (copy / "src" / "main.py").write_text((folders[0] / "src" / "main.py").read_text())
    manifest = build_code(
        "python",
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=None,
        sources=folder_specs([*folders, copy]),
        fractions=FRACTIONS,
        show_progress=False,
    )
    assert manifest["counts"]["exact_duplicates"] == 2  # the fork's two kept functions
    assert manifest["counts"]["after_dedup"] == 6


def test_unreadable_and_unparsable_files_are_skipped_and_counted(tmp_path: Path, cache) -> None:
    folders = write_repos(tmp_path / "src", "python", repos=3)
    (folders[0] / "src" / "py2.py").write_text("print 'hello'\n")
    (folders[0] / "src" / "latin1.py").write_bytes(b"# caf\xe9\nx = 1\n")
    os.symlink(tmp_path / "missing.py", folders[0] / "src" / "dangling.py")
    manifest = build_code(
        "python",
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=None,
        sources=folder_specs(folders),
        fractions=FRACTIONS,
        show_progress=False,
    )
    stats = manifest["sources"][0]["stats"]
    assert stats["unparsable"] == 1 and stats["undecodable"] == 1 and stats["unreadable"] == 1
    assert stats["pairs"] == 2


def test_interrupted_build_leaves_no_dataset_and_resumes(tmp_path: Path, cache, monkeypatch) -> None:
    folders = write_repos(tmp_path / "src", "go", repos=3)
    data_dir = tmp_path / "data"
    real = code_build.extract_source
    calls: list[str] = []

    def failing(source, info, **kwargs):
        calls.append(source.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(source, info, **kwargs)

    monkeypatch.setattr(code_build, "extract_source", failing)
    with pytest.raises(KeyboardInterrupt):
        build_code(
            "go",
            data_dir=data_dir,
            cache=cache,
            leakage=None,
            sources=folder_specs(folders),
            fractions=FRACTIONS,
            show_progress=False,
        )
    assert not is_complete(data_dir, "code-go")
    assert not (data_dir / "code-go").exists()
    with pytest.raises(FileNotFoundError, match="python -m pairdata build code --language go"):
        load_built_pairs("code-go", data_dir=str(data_dir))

    monkeypatch.setattr(code_build, "extract_source", real)
    resumed: list[str] = []
    monkeypatch.setattr(
        code_build,
        "extract_source",
        lambda source, info, **kw: (resumed.append(source.name), real(source, info, **kw))[1],
    )
    build_code(
        "go",
        data_dir=data_dir,
        cache=cache,
        leakage=None,
        sources=folder_specs(folders),
        fractions=FRACTIONS,
        show_progress=False,
    )
    assert resumed == [folder.name for folder in folders[1:]]  # the first source was not read again
    pairs = load_built_pairs("code-go", split="train", data_dir=str(data_dir))
    assert pairs and all(isinstance(pair, Pair) for pair in pairs)
    assert pairs[0].x.startswith("Rev") and pairs[0].y.startswith("func Rev")


def test_git_checkout_records_its_commit(tmp_path: Path, cache) -> None:
    import subprocess

    folders = write_repos(tmp_path / "src", "ruby", repos=3)
    for folder in folders:
        subprocess.run(["git", "init", "-q", str(folder)], check=True)
        subprocess.run(["git", "-C", str(folder), "add", "."], check=True)
        subprocess.run(
            ["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"],
            check=True,
        )
    specs = folder_specs(folders)
    manifest = build_code(
        "ruby",
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=None,
        sources=specs,
        fractions=FRACTIONS,
        show_progress=False,
    )
    commit = manifest["sources"][0]["commit"]
    assert len(commit) == 40
    record = read_split(tmp_path / "data", "code-ruby", "train")[0]
    assert record["sha"] in {source["commit"] for source in manifest["sources"]}

"""Loading built sets through the Hydra configs, the CLI, the listing and the throughput table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pairdata.bench import format_table, rows
from pairdata.cli import main
from pairdata.code.build import build_code
from pairdata.code.languages import LANGUAGES
from pairdata.loading import load_built_pairs, read_pairs
from pairdata.pairs import Pair
from pairdata.text.build import build_text, folder_text_source
from pairdata.trainsets import split_data_config
from tests.conftest import CONFIG_DIR, compose_train_config
from tests.pairdata.conftest import folder_specs, write_repos

MY_CONFIGS = ["code_all", "text_neighbors", "text_search", *(f"code_{language}" for language in LANGUAGES)]


@pytest.fixture
def built(tmp_path: Path, cache) -> Path:
    data_dir = tmp_path / "data"
    for language in LANGUAGES:
        folders = write_repos(tmp_path / "src" / language, language, repos=5)
        build_code(
            language,
            data_dir=data_dir,
            cache=cache,
            leakage=None,
            sources=folder_specs(folders),
            show_progress=False,
            fractions={"train": 0.6, "valid": 0.2, "test": 0.2},
        )
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(6):
        body = " ".join(["The keeper lit the lamp at dusk and watched the ships pass."] * 30)
        (docs / f"n{number}.md").write_text(f"# Lighthouse log {number}\n\n{body} {number}\n")
    for kind in ("neighbors", "search"):
        build_text(
            kind,
            data_dir=data_dir,
            cache=cache,
            leakage=None,
            sources=[folder_text_source(str(docs))],
            chunk_tokens=50,
            min_chunk_tokens=10,
            near_threshold=1.0,
            show_progress=False,
            fractions={"train": 1.0},
        )
    return data_dir


@pytest.mark.parametrize("config", [*MY_CONFIGS, "mixture"])
def test_every_config_instantiates_to_datasets_of_pairs(built: Path, config: str, monkeypatch, tmp_path) -> None:
    from pairdata.trainsets import Mixture

    monkeypatch.setenv("CPT_PAIRDATA_DIR", str(built))
    data = instantiate(split_data_config(compose_train_config([f"data={config}"], tmp_path).data)[0])
    members = list(data.datasets.values()) if isinstance(data, Mixture) else [data]
    if config in ("code_all", "mixture"):
        assert isinstance(data, Mixture) and data.same_source_batches == (config == "mixture")
        assert len(members) == (7 if config == "mixture" else 6)
    for dataset in members:
        assert dataset.column_names == ["x", "y"] and len(dataset)
        assert all(isinstance(row["x"], str) and row["x"] and row["y"] for row in dataset)
    if config in ("code_all", "mixture", "code_python"):  # the Arrow copy reads back the jsonl.gz's pairs exactly
        python = data.datasets["code-python"] if isinstance(data, Mixture) else data
        assert [Pair(r["x"], r["y"]) for r in python] == load_built_pairs("code-python", data_dir=str(built))


def test_config_default_data_dir_expands_user_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CPT_PAIRDATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "code_python.yaml")
    with pytest.raises(InstantiationException) as error:  # hydra wraps the loader's FileNotFoundError
        instantiate(split_data_config(cfg)[0])
    message = str(error.value)
    assert "python -m pairdata build code --language python" in message
    assert str(tmp_path / ".cache" / "cpt-embeddings" / "pairdata") in message


def test_missing_split_and_limit(built: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no split 'test'"):
        load_built_pairs("text-neighbors", split="test", data_dir=str(built))
    assert len(load_built_pairs("code-java", split="train", data_dir=str(built), limit=1)) == 1
    test_pairs = load_built_pairs("code-python", split="test", data_dir=str(built))
    # the test split file is in CodeSearchNet's schema: reading it as official CSN data gives the same pairs
    assert read_pairs(built / "code-python" / "test.jsonl.gz") == test_pairs


def test_cli_builds_a_user_folder_then_lists_and_benchmarks(tmp_path: Path, capsys) -> None:
    folders = write_repos(tmp_path / "src", "python", repos=4)
    data_dir = tmp_path / "data"
    common = [
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--offline",
        "--no-benchmark-check",
    ]
    argv = [
        "build",
        "code",
        "--language",
        "python",
        *(f"--source={folder}" for folder in folders),
        "--name",
        "code-python-mine",
        *common,
    ]
    assert main(argv) == 0
    assert "code-python-mine:" in capsys.readouterr().out
    assert main(argv) == 0  # complete: skipped, not rebuilt
    assert main(["list", "--data-dir", str(data_dir)]) == 0
    assert "code-python-mine" in capsys.readouterr().out
    assert main(["bench", "--data-dir", str(data_dir)]) == 0
    table = capsys.readouterr().out
    assert "| dataset | files | pairs |" in table and "code-python-mine" in table
    assert rows(data_dir)[0]["files"] == 4
    assert "**total**" in format_table(rows(data_dir))


def test_cli_reports_a_missing_benchmark_folder(tmp_path: Path) -> None:
    folders = write_repos(tmp_path / "src", "go", repos=2)
    with pytest.raises(SystemExit, match="--benchmark-dir"):
        main(
            [
                "build",
                "code",
                "--language",
                "go",
                f"--source={folders[0]}",
                "--data-dir",
                str(tmp_path / "d"),
                "--benchmark-dir",
                str(tmp_path / "nowhere"),
                "--quiet",
            ]
        )

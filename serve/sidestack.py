"""An older serving stack in a side virtualenv: infinity-emb 0.0.78 (sentence-transformers 3.4, transformers 4.57).

Exports must load and give the same vectors on the stacks users already run, which pin older
libraries than ours. This module owns that side environment: created on first use under
``$CPT_CACHE_DIR/side-stacks/`` (one ``pip install``, minutes; needs the package index) and
reused after; a ``.ready`` file records what was installed. ``CPT_SIDE_STACK=/path/to/venv``
uses a virtualenv built by hand instead (``python3 -m venv V && V/bin/pip install torch==2.13.0
'infinity-emb[server,torch]==0.0.78'``), never modified here. Two ways in:

- :func:`encode_in_side_stack`: ``SentenceTransformer(folder).encode`` run by the side
  interpreter (sentence-transformers 3.4 + transformers 4.57), vectors back as a numpy array;
- :func:`infinity_server`: ``infinity_emb v2`` serving a folder over HTTP (OpenAI-style
  ``POST /v1/embeddings``), as users deploy it.

Without a network the first use raises :class:`SideStackUnavailable` with pip's last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from models.backbone import cache_root
from serve.process import ServerProcess

NAME = "infinity-0.0.78"
ENV_VAR = "CPT_SIDE_STACK"  # a ready virtualenv with REQUIREMENTS installed, used as is
REQUIREMENTS = ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78")

ENCODE_SCRIPT = """
import json, sys
import numpy as np
import sentence_transformers, transformers
from sentence_transformers import SentenceTransformer
folder, texts_file, out_file = sys.argv[1:4]
model = SentenceTransformer(folder, device="cpu")
texts = json.loads(open(texts_file).read())
np.save(out_file, model.encode(texts, batch_size=8, convert_to_numpy=True))
print(json.dumps({"sentence-transformers": sentence_transformers.__version__,
                  "transformers": transformers.__version__, "max_seq_length": model.max_seq_length}))
"""


class SideStackUnavailable(RuntimeError):
    """The side virtualenv could not be created (no network, no ``venv`` module, ...)."""


def side_stack_dir() -> Path:
    given = os.environ.get(ENV_VAR)
    return Path(given).expanduser() if given else cache_root() / "side-stacks" / NAME


def side_stack_python(create: bool = True) -> Path:
    """The side interpreter, creating the environment on first use (``create=False``: raise instead)."""
    root = side_stack_dir()
    python = root / "bin" / "python"
    if os.environ.get(ENV_VAR):
        if not (root / "bin" / "infinity_emb").is_file():
            raise SideStackUnavailable(f"{ENV_VAR}={root}: no bin/infinity_emb there (pip install {REQUIREMENTS[1]!r})")
        return python
    ready = root / ".ready"
    if ready.is_file() and json.loads(ready.read_text()).get("requirements") == list(REQUIREMENTS):
        return python
    if not create:
        raise SideStackUnavailable(f"no side stack at {root} (created on first use with network access)")
    print(f"creating the side stack {NAME} in {root} (pip install {' '.join(REQUIREMENTS)}; minutes)", file=sys.stderr)
    root.parent.mkdir(parents=True, exist_ok=True)
    if not python.is_file():
        _checked([sys.executable, "-m", "venv", str(root)], "python -m venv")
    _checked(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *REQUIREMENTS], "pip install"
    )
    ready.write_text(json.dumps({"requirements": list(REQUIREMENTS)}) + "\n")
    return python


def _checked(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise SideStackUnavailable(f"{what} failed for the side stack {NAME} (exit {result.returncode}):\n{tail}")


def encode_in_side_stack(folder: str | Path, texts: Sequence[str], create: bool = True) -> tuple[np.ndarray, dict]:
    """``SentenceTransformer(folder).encode(texts)`` under the side stack; returns the vectors and its versions."""
    python = side_stack_python(create)
    with tempfile.TemporaryDirectory() as tmp:
        texts_file, out_file = Path(tmp) / "texts.json", Path(tmp) / "vectors.npy"
        texts_file.write_text(json.dumps(list(texts)))
        result = subprocess.run(
            [str(python), "-c", ENCODE_SCRIPT, str(folder), str(texts_file), str(out_file)],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"sentence-transformers in the side stack could not encode with {folder}:\n{tail}")
        return np.load(out_file), json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def infinity_server(
    folder: str | Path,
    name: str,
    port: int,
    batch_size: int = 32,
    log: Path | None = None,
    create: bool = True,
    threads: int | None = None,
    timeout_s: float = 600,
    dtype: str = "float32",
) -> Iterator[str]:
    """``infinity_emb v2`` serving ``folder`` as ``name`` on 127.0.0.1:``port``; yields its base URL (``.../v1``).

    ``threads``: torch's intra-op threads in that server (``OMP_NUM_THREADS``; infinity has no flag).
    ``dtype``: infinity's ``--dtype`` (``bfloat16`` casts the weights, where our ``--precision bf16`` autocasts).
    """
    python = side_stack_python(create)
    command = [
        str(python.parent / "infinity_emb"),
        "v2",
        "--model-id",
        str(folder),
        "--served-model-name",
        name,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        str(batch_size),
        "--url-prefix",
        "/v1",
        "--no-model-warmup",
        "--dtype",
        dtype,
    ]
    # PYTHONPATH empty: our repository's packages stay out of the side interpreter
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "PYTHONPATH": ""}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("w")) if log is not None else subprocess.DEVNULL
        server = ServerProcess(command[1:], port, out, executable=command[0], ready_path="/v1/models", env=env)
        try:
            server.wait_ready(timeout_s)
            yield f"{server.url}/v1"
        finally:
            server.stop()

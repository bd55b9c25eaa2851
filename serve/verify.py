"""Parity of an export across runtimes: one fixed probe set, every runtime that can run here, one table.

``python -m serve.export CKPT OUT --verify`` (or ``python -m serve.verify OUT``) encodes the probes of
:mod:`serve.probes` (outer whitespace, line breaks, special-token text, texts over 512 tokens,
unicode, code) on each side with

- ``DecoderEmbedder.encode`` on ``OUT`` (the reference),
- the source LoRA checkpoint with its adapters unmerged (peft), when the export came from one and
  it is still there: the merged export must reproduce the model that was trained,
- the installed sentence-transformers on ``OUT/sentence-transformers/<side>``,
- ``tokenizers.Tokenizer.from_file`` + onnxruntime on ``OUT/onnx/<side>`` when the export has ONNX
  graphs (``--onnx``),
- our server (``python -m serve``) over HTTP, with ``dimensions`` at each Matryoshka size,
- sentence-transformers 3.4 + transformers 4.57 and infinity-emb over HTTP, both in the side
  virtualenv of :mod:`serve.sidestack` (skipped, with the reason, when it cannot be created),

and reports, per runtime, side and output size, the max |difference| to the reference and the
min cosine. Every runtime gets the very same strings: one that reads the export differently (does
not strip outer whitespace, parses ``<|endoftext|>`` as a special token, cuts at another length)
fails the check (exit 1), as does one that errors; a skipped one does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serve.probes import probes_for
from serve.stacks import refused

DEFAULT_TOLERANCE = 1e-4
Encoder = Callable[[str], np.ndarray]  # side -> (N, D) vectors of the probes


@dataclass
class Row:
    runtime: str
    side: str
    dims: int
    max_abs_diff: float | None = None
    min_cosine: float | None = None
    skipped: str | None = None
    error: str | None = None  # the runtime failed on the probes: a failure, not a skip
    checked: bool = True  # False: reported only (the int8 graph is not meant to match to the tolerance)

    def passed(self, tolerance: float) -> bool:
        if self.error is not None:
            return False
        if self.skipped is not None or not self.checked:
            return True
        return self.max_abs_diff is not None and self.max_abs_diff <= tolerance


def compare(runtime: str, side: str, got: np.ndarray, want: np.ndarray) -> Row:
    if got.shape != want.shape:
        raise ValueError(f"{runtime} ({side}) returned shape {got.shape}, the reference {want.shape}")
    cosine = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return Row(runtime, side, want.shape[1], float(np.abs(got - want).max()), float(cosine.min()))


def compare_runtime(runtime: str, side: str, encode: Encoder, want: np.ndarray) -> Row:
    """:func:`compare` of ``encode(side)`` with ``want``; a runtime that raises gives a failed row with its error."""
    try:
        got = encode(side)
    except Exception as error:  # reported in the table: the check fails, the other runtimes still run
        return Row(runtime, side, want.shape[1], error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
    return compare(runtime, side, got, want)


def export_probes(export_dir: str | Path) -> tuple[str, ...]:
    """The probes of ``export_dir``: :data:`serve.probes.PROBES` plus its sides' delimiters spelled out."""
    from models.embedder import CONFIG_NAME

    return probes_for(json.loads((Path(export_dir) / CONFIG_NAME).read_text())["sides"])


def verify(
    export_dir: str | Path,
    texts: Sequence[str] | None = None,
    side_stack: bool = True,
    create_side_stack: bool = True,
    log_dir: Path | None = None,
) -> list[Row]:
    """Every runtime's rows for ``export_dir`` (a ``serve.export`` output folder) on ``texts`` (default: its probes)."""
    from models import DecoderEmbedder

    export_dir = Path(export_dir)
    texts = list(export_probes(export_dir) if texts is None else texts)
    info = json.loads((export_dir / "export.json").read_text())
    model = DecoderEmbedder.from_pretrained(export_dir).eval()
    reference = {side: model.encode(texts, side, max_length=info["max_seq_length"]).numpy() for side in info["sides"]}
    support = info.get("stacks") or {}
    rows = [
        refused_row(name, side, info, support, stack) or compare_runtime(name, side, encode, reference[side])
        for name, encode, stack in _local_runtimes(export_dir, info, texts)
        for side in info["sides"]
    ]
    rows += _int8_rows(export_dir, info, texts, reference)
    dims = sorted({d for d in info.get("matryoshka_dims") or [] if d < info["embedding_dim"]})
    rows += _server_rows(export_dir, info, texts, reference, dims, log_dir)
    if info.get("onnx"):
        rows += _server_rows(export_dir, info, texts, reference, dims, log_dir, backend="onnx")
    if side_stack:
        rows += _side_stack_rows(export_dir, info, texts, reference, create_side_stack, log_dir)
    return rows


def refused_row(runtime: str, side: str, info: dict, support: dict, stack: str | None) -> Row | None:
    """A skipped row when the export's ``stacks`` refuses ``stack`` (it cannot reproduce this export), else None."""
    why = refused(support, stack, side) if stack is not None else None
    return None if why is None else Row(runtime, side, info["embedding_dim"], skipped=f"refused by the export: {why}")


def _local_runtimes(export_dir: Path, info: dict, texts: list[str]) -> list[tuple[str, Encoder, str | None]]:
    """The runtimes of this interpreter: sentence-transformers, the unmerged LoRA source, onnxruntime."""
    import sentence_transformers
    import transformers

    from models import DecoderEmbedder

    def st_current(side: str) -> np.ndarray:
        st = sentence_transformers.SentenceTransformer(str(export_dir / info["sides"][side]), device="cpu")
        return st.encode(texts, batch_size=4, convert_to_numpy=True)

    runtimes: list[tuple[str, Encoder, str | None]] = [
        (f"sentence-transformers {sentence_transformers.__version__} + transformers {transformers.__version__}",
         st_current, "sentence-transformers")
    ]  # fmt: skip
    source = info.get("source") or {}
    if source.get("lora") and Path(source["checkpoint"]).is_dir():
        adapted = DecoderEmbedder.from_pretrained(source["checkpoint"], merge_adapters=False).eval()

        def unmerged(side: str) -> np.ndarray:
            return adapted.encode(texts, side, max_length=info["max_seq_length"]).numpy()

        runtimes.append((f"source LoRA checkpoint, adapters unmerged (r={source['lora']['r']})", unmerged, None))
    if info.get("onnx"):
        import onnxruntime

        from serve.onnx_export import OnnxSide

        graphs = export_dir / info["onnx"]["folder"]
        runtimes.append((f"tokenizers.Tokenizer.from_file + onnxruntime {onnxruntime.__version__}",
                         lambda side: OnnxSide(graphs / side).encode(texts), None))  # fmt: skip
    return runtimes


def _int8_rows(export_dir: Path, info: dict, texts: list[str], reference: dict) -> list[Row]:
    onnx = info.get("onnx")
    if not onnx or not onnx["int8"]:
        return []
    from serve.onnx_export import OnnxSide

    rows = []
    for side in info["sides"]:
        got = OnnxSide(export_dir / onnx["folder"] / side, int8=True).encode(texts)
        rows.append(compare("onnxruntime, int8 graph (reported, not held to the tolerance)", side, got,
                            reference[side]))  # fmt: skip
        rows[-1].checked = False
    return rows


def _http_encoder(url: str, model_of: Callable[[str], str], texts: Sequence[str], dims: int | None = None) -> Encoder:
    """An :data:`Encoder` posting ``texts`` to the OpenAI-style ``url`` as model ``model_of(side)``."""
    return lambda side: _post_embeddings(url, model_of(side), texts, dims)


def _post_embeddings(url: str, model: str, texts: Sequence[str], dims: int | None = None) -> np.ndarray:
    import httpx

    body: dict = {"model": model, "input": list(texts), "encoding_format": "float"}
    if dims is not None:
        body["dimensions"] = dims
    response = httpx.post(f"{url}/embeddings", json=body, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(
            f"POST {url}/embeddings ({model}, dimensions={dims}): {response.status_code} {response.text[:300]}"
        )
    data = sorted(response.json()["data"], key=lambda item: item["index"])
    return np.asarray([item["embedding"] for item in data], dtype=np.float32)


def _server_rows(
    export_dir: Path,
    info: dict,
    texts: Sequence[str],
    reference: dict,
    dims: list[int],
    log_dir: Path | None,
    backend: str = "torch",
) -> list[Row]:
    import torch

    from models import truncate_embeddings
    from serve.process import ServerProcess, free_port

    port = free_port()
    log = (log_dir / f"server-{backend}.log").open("w") if log_dir is not None else None
    arguments = ["-m", "serve", "--model", str(export_dir), "--name", "verify", "--port", str(port), "--max-length",
                 str(info["max_seq_length"]), "--log-level", "warning", "--backend", backend]  # fmt: skip
    server = ServerProcess(arguments, port, log)
    runtime = "our server (HTTP)" if backend == "torch" else f"our server, --backend {backend} (HTTP)"
    rows = []
    try:
        server.wait_ready()
        url = f"{server.url}/v1"
        for side in info["sides"]:
            rows.append(compare_runtime(runtime, side, _http_encoder(url, "verify-{}".format, texts), reference[side]))
            for d in dims:
                want = truncate_embeddings(torch.from_numpy(reference[side]), d).numpy()
                rows.append(compare_runtime(runtime, side, _http_encoder(url, "verify-{}".format, texts, d), want))
    finally:
        server.stop()
        if log is not None:
            log.close()
    return rows


def _side_stack_rows(
    export_dir: Path, info: dict, texts: Sequence[str], reference: dict, create: bool, log_dir: Path | None
) -> list[Row]:
    from serve.process import free_port
    from serve.sidestack import NAME, SideStackUnavailable, encode_in_side_stack, infinity_server

    support = info.get("stacks") or {}
    if refused(support, "sentence-transformers") and refused(support, "infinity-emb"):
        return [refused_row("older stack (side venv)", side, info, support, "sentence-transformers")
                for side in info["sides"]]  # fmt: skip
    rows = []
    versions: dict = {}

    def older(side: str) -> np.ndarray:
        got, found = encode_in_side_stack(export_dir / info["sides"][side], texts, create=create)
        versions.update(found)
        return got

    try:
        for side in info["sides"]:
            rows.append(compare_runtime(f"sentence-transformers ({NAME} venv)", side, older, reference[side]))
            if versions:
                rows[-1].runtime = (f"sentence-transformers {versions['sentence-transformers']} + transformers "
                                    f"{versions['transformers']} ({NAME} venv)")  # fmt: skip
        for side in info["sides"]:
            skip = refused_row("infinity-emb 0.0.78 (HTTP)", side, info, support, "infinity-emb")
            if skip is not None:
                rows.append(skip)
                continue
            log = log_dir / f"infinity-{side}.log" if log_dir is not None else None
            with infinity_server(export_dir / info["sides"][side], "verify", free_port(), log=log) as url:
                encode = _http_encoder(url, lambda _: "verify", texts)
                rows.append(compare_runtime("infinity-emb 0.0.78 (HTTP)", side, encode, reference[side]))
    except SideStackUnavailable as error:
        first_line = str(error).splitlines()[0]
        rows += [
            Row("older stack (side venv)", side, info["embedding_dim"], skipped=first_line) for side in info["sides"]
        ]
    return rows


def table(rows: list[Row], tolerance: float) -> str:
    lines = ["| runtime | side | dims | max abs diff | min cosine | within tolerance |", "|---|---|---:|---:|---:|---|"]
    for row in rows:
        if row.skipped is not None:
            lines.append(f"| {row.runtime} | {row.side} | {row.dims} | - | - | skipped: {row.skipped} |")
        elif row.error is not None:
            lines.append(f"| {row.runtime} | {row.side} | {row.dims} | - | - | **NO**: {row.error} |")
        else:
            verdict = "reported" if not row.checked else "yes" if row.passed(tolerance) else f"**NO** (> {tolerance:g})"
            lines.append(
                f"| {row.runtime} | {row.side} | {row.dims} | {row.max_abs_diff:.2e} | "
                f"{row.min_cosine:.6f} | {verdict} |"
            )
    return "\n".join(lines)


def run_verify(export_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE, side_stack: bool = True) -> bool:
    """Print the parity table of ``export_dir``; True when every runtime that ran is within ``tolerance``.

    The table and the servers' logs are also written to ``export_dir/verify/``.
    """
    log_dir = Path(export_dir) / "verify"
    log_dir.mkdir(exist_ok=True)
    texts = export_probes(export_dir)
    rows = verify(export_dir, texts, side_stack=side_stack, log_dir=log_dir)
    report = f"parity of {export_dir} on {len(texts)} probes (serve/probes.py; reference: DecoderEmbedder.encode)\n\n"
    report += table(rows, tolerance) + "\n"
    (log_dir / "parity.md").write_text(report)
    (log_dir / "parity.json").write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    print(report)
    failed = [row for row in rows if not row.passed(tolerance)]
    if failed:
        print(f"{len(failed)} runtime/side rows past tolerance {tolerance:g} or failed", file=sys.stderr)
    return not failed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.verify", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="a python -m serve.export output folder")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max abs difference allowed")
    parser.add_argument("--no-side-stack", action="store_true", help="skip the older stack in the side virtualenv")
    args = parser.parse_args(argv)
    sys.exit(0 if run_verify(args.export_dir, args.tolerance, side_stack=not args.no_side_stack) else 1)


if __name__ == "__main__":
    main()

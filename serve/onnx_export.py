"""ONNX graphs of an export, one per side, and the onnxruntime runners that read them.

``python -m serve.export CKPT OUT --onnx [--onnx-int8]`` writes::

    OUT/onnx/<side>/model.onnx (+ model.onnx.data)   (input_ids, attention_mask) -> sentence_embedding
    OUT/onnx/<side>/model.int8.onnx                  with --onnx-int8: dynamic int8 quantization
    OUT/onnx/<side>/tokenizer.json                   the side's tokenizer (adds its delimiters)
    OUT/onnx/<side>/onnx_config.json                 max_seq_length, sizes, the check against torch

Each graph is the whole side: backbone, last-token pooling at the closing delimiter (positions
derived from the mask, so either padding side works), the projection when there is one, and L2
normalisation; batch and sequence axes are dynamic. The export is checked with onnxruntime
against ``DecoderEmbedder`` on the probes of :mod:`serve.probes` and refused past ``1e-4``; the int8 graph
(:func:`quantize_int8`) has its cosine to fp32 recorded (its quality drop on STS-B:
``benchmarks/onnx_int8.py``).

:class:`OnnxSide` runs one side from its folder with nothing but onnxruntime, tokenizers and
numpy (``--verify`` uses it as a runtime); :class:`OnnxTower` stands in for a
``DecoderEmbedder`` inside the server (``python -m serve --backend onnx``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from models import DecoderEmbedder

ONNX_DIR = "onnx"
GRAPH = "model.onnx"
INT8_GRAPH = "model.int8.onnx"
CONFIG = "onnx_config.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"  # not "embedding": that name clashes with a node and onnxruntime refuses the graph
TOLERANCE = 1e-4


def export_onnx(model: DecoderEmbedder, out: Path, st_folders: dict[str, Path], max_seq_length: int,
                int8: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write ``out/onnx/<side>`` for every side of ``model``; returns each side's check figures."""
    from serve.probes import probes_for

    probes = list(probes_for({name: side.to_dict() for name, side in model.sides.items()}))
    checks = {}
    for side in model.side_names:
        folder = Path(out) / ONNX_DIR / side
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        example = model.tokenize(["an example", "a somewhat longer example input"], side, max_seq_length)
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        torch.onnx.export(
            SideGraph(model, side).eval(),
            (example["input_ids"], example["attention_mask"]),
            str(folder / GRAPH),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            external_data=True,
            verbose=False,
        )
        shutil.copy(st_folders[side] / "tokenizer.json", folder / "tokenizer.json")
        config = {
            "side": side,
            "max_seq_length": max_seq_length,
            "embedding_dim": model.embedding_dim,
            "matryoshka_dims": model.matryoshka_dims,
            "pad_id": int(model.tokenizer.pad_token_id),
            "prompt": model.sides[side].prompt(),  # the side's task instruction, put before every text
            "inputs": list(INPUTS),
            "output": OUTPUT,
        }
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        with torch.inference_mode():
            want = model.encode(probes, side, max_length=max_seq_length).numpy()
        got = OnnxSide(folder).encode(probes)
        check: dict[str, Any] = {"max_abs_diff": float(np.abs(got - want).max())}
        if check["max_abs_diff"] > TOLERANCE:
            raise RuntimeError(f"{folder / GRAPH}: onnxruntime differs from torch by {check['max_abs_diff']:.2e} "
                               f"(> {TOLERANCE:g}) on the probes")  # fmt: skip
        if int8:
            quantize_int8(folder / GRAPH, folder / INT8_GRAPH)
            quantized = OnnxSide(folder, int8=True).encode(probes)
            check["int8_min_cosine"] = float((quantized * want).sum(axis=1).min())
        config["check"] = {**check, "probes": len(probes), "reference": "DecoderEmbedder.encode (fp32)"}
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        checks[side] = check
    return checks


# The MLP's output projection of each decoder family: its input carries the activation outliers of
# decoders, which one dynamic int8 scale per tensor cannot cover; it stays fp32 in the int8 graph.
MLP_OUTPUT_PROJECTIONS = ("down_proj", "dense_4h_to_h", "mlp.c_proj", "fc2")


def quantize_int8(graph: Path, out: Path) -> list[str]:
    """Dynamic int8 quantization of ``graph`` into ``out``; returns the MatMuls kept in fp32.

    Weights per output channel as uint8 (signed int8 per channel returned vectors uncorrelated with
    fp32's on this CPU's AVX2 kernels), activations quantized per tensor at run time. On the
    SmolLM2 search tower's probes, quantizing every MatMul gave cosines to fp32 of 0.69-0.82 (signed
    per tensor) and 0.79-0.97 (unsigned per channel); keeping the MLP output projections in fp32
    gave 0.97-0.99.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(graph), load_external_data=False)
    kept = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if node.op_type in ("MatMul", "Gemm") and any(name in scopes for name in MLP_OUTPUT_PROJECTIONS):
            kept.append(node.name)
    quantize_dynamic(str(graph), str(out), weight_type=QuantType.QUInt8, per_channel=True, nodes_to_exclude=kept)
    return kept


class SideGraph(torch.nn.Module):
    """One side of the tower as a module of (input_ids, attention_mask), for ``torch.onnx.export``."""

    def __init__(self, model: DecoderEmbedder, side: str) -> None:
        super().__init__()
        self.model, self.side = model, side

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, self.side)


def session_options(threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxSide:
    """One exported side: ``encode(texts)`` with onnxruntime, the folder's ``tokenizer.json`` and its prompt."""

    def __init__(self, folder: str | Path, int8: bool = False, threads: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.config = json.loads((self.folder / CONFIG).read_text())
        graph = self.folder / (INT8_GRAPH if int8 else GRAPH)
        if not graph.is_file():
            raise FileNotFoundError(f"{graph} not found (export with --onnx{' --onnx-int8' if int8 else ''})")
        self.session = onnxruntime.InferenceSession(str(graph), session_options(threads),
                                                    providers=["CPUExecutionProvider"])  # fmt: skip
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))  # truncates at max_seq_length
        self.tokenizer.enable_padding(pad_id=self.config["pad_id"], direction="right")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self.session.run([OUTPUT], feed)[0]

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Embed texts, the side's task instruction (``onnx_config.json``'s ``prompt``) before each."""
        prompt = self.config.get("prompt", "")
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch([prompt + text for text in texts[start : start + batch_size]])
            ids = np.asarray([e.ids for e in encodings])
            mask = np.asarray([e.attention_mask for e in encodings])
            out.append(self.run(ids, mask))
        return np.concatenate(out) if out else np.empty((0, self.config["embedding_dim"]), np.float32)


class OnnxTower:
    """What :class:`serve.engine.EmbeddingEngine` needs of a model, run by onnxruntime from an export folder.

    The tokenizer, sides and sizes come from the export's own checkpoint files (no torch weights are
    loaded); each call runs every side's rows through that side's graph.
    """

    def __init__(self, folder: str | Path, int8: bool = False, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        from models.embedder import CONFIG_NAME, TOKENIZER_DIR
        from models.sides import parse_sides

        folder = Path(folder)
        if not (folder / ONNX_DIR).is_dir():
            raise FileNotFoundError(
                f"{folder / ONNX_DIR} not found: export with python -m serve.export CKPT OUT --onnx"
            )
        config = json.loads((folder / CONFIG_NAME).read_text())
        self.sides = parse_sides(config["sides"])
        self.side_names = tuple(self.sides)
        self.embedding_dim = config["embedding_dim"]
        self.matryoshka_dims = config.get("matryoshka_dims")
        self.padding_side = config["padding_side"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
        self.graphs = {side: OnnxSide(folder / ONNX_DIR / side, int8=int8, threads=threads) for side in self.sides}

    def to(self, device: Any) -> OnnxTower:
        if str(device) != "cpu":
            raise ValueError(f"the onnx backend runs on the CPU here, not {device}")
        return self

    def eval(self) -> OnnxTower:
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sides: Sequence[str]) -> torch.Tensor:
        ids, mask = input_ids.numpy(), attention_mask.numpy()
        out = np.empty((len(sides), self.embedding_dim), dtype=np.float32)
        for side in dict.fromkeys(sides):
            rows = np.asarray([i for i, name in enumerate(sides) if name == side])
            out[rows] = self.graphs[side].run(ids[rows], mask[rows])
        return torch.from_numpy(out)

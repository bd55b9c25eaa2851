"""ONNX: the exported graph of each side equals the torch model; the server runs it with the same API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["short", "def f(x):\n    return x + 1", "word " * 100, "naïve café 東京 🤖"]
MAX_SEQ = 40


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """A tiny two-sided tower with separate weights and a projection, exported with --onnx-int8 (~1 min)."""
    from models import DecoderEmbedder
    from serve.export import main

    root = tmp_path_factory.mktemp("onnx")
    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, projection_dim=16,
                                  shared_weights=False, matryoshka_dims=[8, 16])  # fmt: skip
    model.save_pretrained(root / "checkpoint")
    main([str(root / "checkpoint"), str(root / "out"), "--max-seq-length", str(MAX_SEQ), "--onnx-int8"])
    return model, root / "out"


def test_each_sides_graph_equals_the_model(onnx_export):
    from serve.onnx_export import OnnxSide

    model, out = onnx_export
    info = json.loads((out / "export.json").read_text())
    assert info["onnx"]["folder"] == "onnx" and info["onnx"]["int8"] is True
    for side in TWO_SIDES:
        want = model.encode(TEXTS, side, max_length=MAX_SEQ).numpy()
        assert np.abs(OnnxSide(out / "onnx" / side).encode(TEXTS, batch_size=3) - want).max() < 1e-4
        quantized = OnnxSide(out / "onnx" / side, int8=True).encode(TEXTS)
        assert (quantized * want).sum(axis=1).min() > 0.9  # int8 weights: close, not equal
        config = json.loads((out / "onnx" / side / "onnx_config.json").read_text())
        assert config["check"]["max_abs_diff"] < 1e-4 and config["max_seq_length"] == MAX_SEQ


def test_the_server_runs_the_onnx_graphs(onnx_export):
    from fastapi.testclient import TestClient

    from serve.app import Settings, create_app
    from serve.engine import EmbeddingEngine

    model, out = onnx_export
    engine = EmbeddingEngine.from_folder(out, "tiny", max_length=MAX_SEQ, backend="onnx")
    assert type(engine.model).__name__ == "OnnxTower"
    with TestClient(create_app(Settings(max_length=MAX_SEQ), engine=engine)) as client:
        for side in TWO_SIDES:
            response = client.post("/v1/embeddings", json={"model": f"tiny-{side}", "input": TEXTS})
            assert response.status_code == 200
            got = np.asarray([item["embedding"] for item in response.json()["data"]])
            assert np.abs(got - model.encode(TEXTS, side, max_length=MAX_SEQ).numpy()).max() < 1e-4
        response = client.post("/v1/embeddings", json={"model": "tiny-doc", "input": TEXTS[:1], "dimensions": 8})
        assert len(response.json()["data"][0]["embedding"]) == 8


def test_the_onnx_backend_needs_graphs_and_fp32(tmp_path, onnx_export):
    from serve.engine import EmbeddingEngine

    model, out = onnx_export
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="export with python -m serve.export CKPT OUT --onnx"):
        EmbeddingEngine.from_folder(tmp_path / "plain", backend="onnx")
    with pytest.raises(ValueError, match="precision must be fp32"):
        EmbeddingEngine.from_folder(out, backend="onnx", precision="bf16")
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbeddingEngine.from_folder(out, backend="tensorrt")

"""Clustering and probe scores on toy problems with known answers, and the map figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from viz import (
    embedding_map_figure,
    hungarian_accuracy,
    kmeans_accuracy,
    linear_probe_accuracy,
    pca_coordinates,
    save_figure,
)


def blobs(per_class: int = 10, classes: int = 3, dim: int = 8, spread: float = 0.05) -> tuple[np.ndarray, list[str]]:
    """Well separated clusters: class i sits around the i-th basis vector."""
    rng = np.random.default_rng(0)
    centers = np.eye(dim)[:classes]
    vectors = np.concatenate([center + spread * rng.standard_normal((per_class, dim)) for center in centers])
    labels = [f"class-{i}" for i in range(classes) for _ in range(per_class)]
    return vectors, labels


def test_hungarian_accuracy_matches_clusters_one_to_one() -> None:
    # Cluster 1 -> a (2 right), cluster 0 -> b (2 right; its c is wrong), cluster 2 -> c (1 right): 5 of 6.
    accuracy, mapping = hungarian_accuracy(["a", "a", "b", "b", "c", "c"], [1, 1, 0, 0, 0, 2])
    assert accuracy == pytest.approx(5 / 6)
    assert mapping == {1: "a", 0: "b", 2: "c"}


def test_hungarian_accuracy_with_more_clusters_than_labels_counts_the_unmatched_as_wrong() -> None:
    accuracy, mapping = hungarian_accuracy(["a", "a", "a", "b"], [0, 0, 1, 2])
    assert accuracy == pytest.approx(3 / 4)  # 0 -> a (2), 2 -> b (1); cluster 1 is left unmatched
    assert set(mapping) == {0, 2}


def test_hungarian_accuracy_is_invariant_to_cluster_names() -> None:
    labels = ["x", "y", "z", "x", "y", "z"]
    assert hungarian_accuracy(labels, [7, 3, 5, 7, 3, 5])[0] == 1.0
    with pytest.raises(ValueError, match="as many labels"):
        hungarian_accuracy(labels, [0, 1])


def test_kmeans_and_probe_recover_separated_blobs() -> None:
    vectors, labels = blobs()
    clusters = kmeans_accuracy(vectors, labels, seed=0)
    assert clusters.accuracy == 1.0
    assert sorted(clusters.mapping.values()) == ["class-0", "class-1", "class-2"]
    probe = linear_probe_accuracy(vectors, labels, folds=5)
    assert probe.mean == 1.0 and len(probe.folds) == 5


def test_probe_needs_enough_items_per_category() -> None:
    vectors, labels = blobs(per_class=3)
    with pytest.raises(ValueError, match="folds=5 needs >= 5 items per category; the smallest has 3"):
        linear_probe_accuracy(vectors, labels, folds=5)


def test_pca_coordinates_keep_the_largest_directions_first() -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((50, 6)) * np.array([10.0, 5.0, 1.0, 0.1, 0.1, 0.1])
    coords, ratio = pca_coordinates(data, 3)
    assert coords.shape == (50, 3)
    assert ratio[0] > ratio[1] > ratio[2] and ratio.sum() > 0.99
    with pytest.raises(ValueError, match="n_components=7"):
        pca_coordinates(data, 7)


def test_embedding_map_figure_has_a_3d_and_a_2d_panel_per_model(tmp_path: Path) -> None:
    vectors, labels = blobs()
    figure = embedding_map_figure({"a": vectors, "b": vectors[:, ::-1]}, labels, {"a": "k-means acc 1.00"})
    assert [axis.name for axis in figure.axes] == ["3d", "rectilinear", "3d", "rectilinear"]
    path = save_figure(figure, tmp_path / "map.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="3 embeddings for 30 labels"):
        embedding_map_figure({"c": vectors[:3]}, labels)


def test_probe_standardises_so_a_small_scale_signal_still_counts() -> None:
    rng = np.random.default_rng(2)
    labels = ["a", "b"] * 20
    signal = np.array([0.01 if label == "a" else -0.01 for label in labels])
    vectors = np.stack([rng.standard_normal(40), signal + 0.001 * rng.standard_normal(40)], axis=1)  # (40, 2)
    assert linear_probe_accuracy(vectors, labels).mean == 1.0
    assert linear_probe_accuracy(vectors, labels, standardize=False).mean < 0.8  # regularised away

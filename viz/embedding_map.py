"""How well embeddings separate labelled categories: PCA maps, k-means with Hungarian matching, a linear probe.

The picture in OpenAI's embeddings announcement ("Introducing text and code embeddings", 2022):
DBpedia texts embedded, reduced to 3-D and coloured by category. The two numbers beside it say
the same thing without the eye: how well *unsupervised* k-means (one cluster per category)
recovers the categories once clusters are matched one-to-one to categories (Hungarian
algorithm), and how well a *supervised* linear classifier reads them (cross-validated).

References:
    Neelakantan et al., "Text and Code Embeddings by Contrastive Pre-Training", arXiv:2201.10005.
    Kuhn, "The Hungarian method for the assignment problem", 1955 (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure


@dataclass(frozen=True)
class ClusterScore:
    """k-means against the true categories.

    Attributes:
        accuracy: fraction of items whose cluster is matched to their category.
        clusters: (N,) cluster id of each item.
        mapping: cluster id -> the category it is matched to (unmatched clusters are absent).
    """

    accuracy: float
    clusters: np.ndarray
    mapping: dict[int, str]


@dataclass(frozen=True)
class ProbeScore:
    """Cross-validated accuracy of a logistic-regression probe: mean and standard deviation over folds."""

    mean: float
    std: float
    folds: tuple[float, ...]


def _as_2d(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"embeddings must be (N >= 2, D), got shape {array.shape}")
    return array


def pca_coordinates(embeddings: np.ndarray, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project embeddings onto their first ``n_components`` principal components.

    Returns:
        (N, n_components) coordinates and the explained variance ratio of each component.
    """
    from sklearn.decomposition import PCA

    array = _as_2d(embeddings)
    if not 1 <= n_components <= min(array.shape):
        raise ValueError(f"n_components={n_components} must be in [1, {min(array.shape)}] for shape {array.shape}")
    pca = PCA(n_components=n_components, random_state=seed)
    return pca.fit_transform(array), pca.explained_variance_ratio_


def hungarian_accuracy(labels: Sequence[object], clusters: Sequence[int]) -> tuple[float, dict[int, object]]:
    """Accuracy of a clustering after matching clusters to labels one-to-one so that most items agree.

    Builds the (clusters x labels) contingency table and solves the assignment maximising the
    matched counts; with more clusters than labels (or fewer) the unmatched ones count as wrong.

    Args:
        labels: (N,) true label of each item.
        clusters: (N,) cluster id of each item.

    Returns:
        The accuracy in [0, 1] and cluster id -> matched label.
    """
    from scipy.optimize import linear_sum_assignment

    if len(labels) != len(clusters) or not len(labels):
        raise ValueError(f"need as many labels as clusters (> 0), got {len(labels)} and {len(clusters)}")
    label_names = list(dict.fromkeys(labels))
    cluster_ids = list(dict.fromkeys(int(c) for c in clusters))
    table = np.zeros((len(cluster_ids), len(label_names)), dtype=np.int64)  # (clusters, labels)
    label_index = {label: i for i, label in enumerate(label_names)}
    cluster_index = {cluster: i for i, cluster in enumerate(cluster_ids)}
    for label, cluster in zip(labels, clusters, strict=True):
        table[cluster_index[int(cluster)], label_index[label]] += 1
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = {cluster_ids[r]: label_names[c] for r, c in zip(rows, cols, strict=True)}
    return float(table[rows, cols].sum()) / len(labels), mapping


def kmeans_accuracy(
    embeddings: np.ndarray, labels: Sequence[str], n_clusters: int | None = None, seed: int = 0, n_init: int = 10
) -> ClusterScore:
    """k-means on the embeddings (one cluster per category by default), scored by :func:`hungarian_accuracy`.

    Args:
        embeddings: (N, D); L2-normalised embeddings make Euclidean k-means rank like cosine.
        labels: (N,) category of each item.
        n_clusters: clusters to fit; ``None`` uses the number of distinct labels.
        seed: k-means initialisation seed.
        n_init: k-means restarts (the best inertia is kept).
    """
    from sklearn.cluster import KMeans

    array = _as_2d(embeddings)
    k = n_clusters or len(set(labels))
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(array)
    accuracy, mapping = hungarian_accuracy(labels, clusters)
    return ClusterScore(accuracy=accuracy, clusters=clusters, mapping={int(c): str(v) for c, v in mapping.items()})


def linear_probe_accuracy(
    embeddings: np.ndarray,
    labels: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
    standardize: bool = True,
) -> ProbeScore:
    """Stratified k-fold accuracy of a logistic-regression probe on frozen embeddings.

    Features are standardised by default (a ``StandardScaler`` fitted inside each training fold):
    on L2-normalised embeddings the informative directions can be tiny next to a few large
    dimensions (decoders' last-token states especially), and an L2-regularised probe on the raw
    vectors then mostly measures that scale, not what is linearly readable. On the DBpedia sample,
    all-MiniLM-L6-v2 gives 0.90 standardised and 0.79 raw; untrained SmolLM2-135M 0.83 and 0.21.

    Args:
        embeddings: (N, D).
        labels: (N,); every category needs at least ``folds`` items.
        folds: cross-validation folds (shuffled with ``seed``).
        seed: fold shuffling seed.
        c: inverse L2 regularisation strength of the probe.
        standardize: scale each feature to zero mean and unit variance first.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    array = _as_2d(embeddings)
    smallest = min(np.unique(np.asarray(labels), return_counts=True)[1])
    if smallest < folds:
        raise ValueError(f"folds={folds} needs >= {folds} items per category; the smallest has {smallest}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probe = LogisticRegression(C=c, max_iter=3000)
    model = make_pipeline(StandardScaler(), probe) if standardize else probe
    scores = cross_val_score(model, array, np.asarray(labels), cv=splitter)
    return ProbeScore(mean=float(scores.mean()), std=float(scores.std()), folds=tuple(float(s) for s in scores))


def category_colors(categories: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A fixed colour per category (sorted names; tab20 darks first, then lights), equal across figures."""
    from matplotlib import colormaps

    names = sorted(set(categories))
    table = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {name: table(order[i % 20]) for i, name in enumerate(names)}


def embedding_map_figure(
    embeddings: Mapping[str, np.ndarray],
    labels: Sequence[str],
    subtitles: Mapping[str, str] | None = None,
    seed: int = 0,
) -> Figure:
    """For each model a row: its embeddings by PCA in 3-D (left) and 2-D (right), coloured by category.

    Args:
        embeddings: model name -> (N, D) embeddings of the same N items.
        labels: (N,) category of each item.
        subtitles: model name -> extra text under its name (e.g. the k-means and probe accuracies).
        seed: PCA seed.

    Returns:
        The figure, with one legend of categories on the right.
    """
    if not embeddings:
        raise ValueError("no embeddings to plot")
    colors = category_colors(labels)
    label_array = np.asarray(labels)
    figure = Figure(figsize=(11.0, 4.4 * len(embeddings)), layout="constrained")
    for row, (name, vectors) in enumerate(embeddings.items()):
        if len(vectors) != len(labels):
            raise ValueError(f"{name}: {len(vectors)} embeddings for {len(labels)} labels")
        coords3, ratio3 = pca_coordinates(vectors, 3, seed)
        coords2, ratio2 = coords3[:, :2], ratio3[:2]
        ax3 = figure.add_subplot(len(embeddings), 2, 2 * row + 1, projection="3d")
        ax2 = figure.add_subplot(len(embeddings), 2, 2 * row + 2)
        for category, color in colors.items():
            mask = label_array == category
            ax3.scatter(*coords3[mask].T, color=color, s=12, depthshade=True, label=category)
            ax2.scatter(*coords2[mask].T, color=color, s=14, label=category)
        ax3.set_title(f"{name}: PCA 3-D ({ratio3.sum():.0%} of variance)", fontsize=9)
        ax2.set_title(f"{name}: PCA 2-D ({ratio2.sum():.0%} of variance)", fontsize=9)
        for axis in (ax3, ax2):
            axis.tick_params(labelsize=6)
        ax2.set_xlabel(f"PC1 ({ratio2[0]:.0%})", fontsize=8)
        ax2.set_ylabel(f"PC2 ({ratio2[1]:.0%})", fontsize=8)
        if subtitles and name in subtitles:
            ax2.text(
                0.01,
                0.99,
                subtitles[name],
                transform=ax2.transAxes,
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
            )
    handles, names = figure.axes[1].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside right center", fontsize=8, frameon=False, markerscale=1.5)
    return figure

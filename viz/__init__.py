"""Figures and the numbers behind them: embedding maps, training curves, evaluation results.

Shared by the notebooks (``notebooks/``) and the command lines (``eval/run.py ... plot=true``).
Depends only on numpy, matplotlib, scikit-learn and scipy, never on ``train``, ``eval`` or
``serve``: it reads what they write (``metrics.jsonl``, ``results.json``) and embeddings as arrays.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so nothing here touches
the global backend: a notebook shows the returned figure inline, a command line saves it with
:func:`viz.figures.save_figure` (atomic: temporary file, then ``os.replace``).
"""

from viz.curves import read_metrics, training_curves_figure
from viz.embedding_map import (
    ClusterScore,
    ProbeScore,
    category_colors,
    embedding_map_figure,
    hungarian_accuracy,
    kmeans_accuracy,
    linear_probe_accuracy,
    pca_coordinates,
)
from viz.figures import save_figure
from viz.results import (
    comparison_figure,
    load_results,
    results_figure,
    write_record_plot,
    write_results_plot,
)

__all__ = [
    "ClusterScore",
    "ProbeScore",
    "category_colors",
    "comparison_figure",
    "embedding_map_figure",
    "hungarian_accuracy",
    "kmeans_accuracy",
    "linear_probe_accuracy",
    "load_results",
    "pca_coordinates",
    "read_metrics",
    "results_figure",
    "save_figure",
    "training_curves_figure",
    "write_record_plot",
    "write_results_plot",
]

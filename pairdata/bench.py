"""Build throughput per dataset (files/s, pairs/s), read from the manifests of a data folder.

Usage::

    python -m pairdata bench [--data-dir DIR]      # or: python -m pairdata.bench [DIR]

``files/s`` is files read over source extraction time (fetching excluded: cached archives are
reused), ``pairs/s`` is final pairs over the whole build (extraction, dedup, split, leakage).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pairdata.loading import default_data_dir
from pairdata.store import read_manifest


def rows(data_dir: str | Path) -> list[dict]:
    """One row per complete dataset under ``data_dir``."""
    root = Path(data_dir).expanduser()
    result = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not (path / "manifest.json").is_file():
            continue
        manifest = read_manifest(root, path.name)
        timing = manifest["timing"]
        pairs = sum(manifest["counts"]["splits"].values())
        result.append(
            {
                "dataset": manifest["name"],
                "files": timing["files_read"],
                "pairs": pairs,
                "extract_s": timing["extract_seconds"],
                "build_s": timing["build_seconds"],
                "files_per_s": timing["files_read"] / timing["extract_seconds"] if timing["extract_seconds"] else 0.0,
                "pairs_per_s": pairs / timing["build_seconds"] if timing["build_seconds"] else 0.0,
            }
        )
    return result


def format_table(table: list[dict]) -> str:
    """A Markdown table of :func:`rows`, with a total row."""
    lines = [
        "| dataset | files | pairs | extract s | build s | files/s | pairs/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        lines.append(
            f"| {row['dataset']} | {row['files']:,} | {row['pairs']:,} | {row['extract_s']:.0f} | "
            f"{row['build_s']:.0f} | {row['files_per_s']:.1f} | {row['pairs_per_s']:.1f} |"
        )
    if table:
        files = sum(row["files"] for row in table)
        pairs = sum(row["pairs"] for row in table)
        extract = sum(row["extract_s"] for row in table)
        build = sum(row["build_s"] for row in table)
        lines.append(
            f"| **total** | {files:,} | {pairs:,} | {extract:.0f} | {build:.0f} | "
            f"{files / extract if extract else 0:.1f} | {pairs / build if build else 0:.1f} |"
        )
    return "\n".join(lines)


def print_table(data_dir: str | Path) -> None:
    table = rows(data_dir)
    print(format_table(table) if table else f"no built datasets in {Path(data_dir).expanduser()}")


if __name__ == "__main__":
    print_table(sys.argv[1] if len(sys.argv) > 1 else default_data_dir())

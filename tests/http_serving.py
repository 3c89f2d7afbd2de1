"""`mlflow models serve` in a subprocess, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: dict, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def served(model_uri: str, venv_bin: Path, cwd: Path, env: dict[str, str], log: Path,
           start_timeout_s: float = 180) -> Iterator[str]:
    """``mlflow models serve -m model_uri --env-manager local`` on a free loopback port; yields its
    base URL once /ping answers, and stops the whole process group afterwards. The venv's bin goes
    first on PATH because `mlflow models serve` execs `uvicorn` from PATH."""
    port = free_port()
    env = {**env, "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(venv_bin / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                assert server.poll() is None, log.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                assert time.monotonic() < deadline, "server did not come up: " + log.read_text()[-3000:]
                time.sleep(1)
            yield f"http://127.0.0.1:{port}"
        finally:
            # The server may have died already; the assertion above then says why, not this kill.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)

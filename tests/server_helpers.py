"""Start and stop a real ``langgraph dev`` server for the tests.

The server runs the repository's ``langgraph.json`` graphs from a temporary
folder (its ``.langgraph_api`` store lands there, not in the repository), on a
free 127.0.0.1 port, with telemetry, tracing and the version check off. It is
stopped by killing its process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
QUIET_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # langgraph-cli: no usage report per command
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # langgraph-api: no PyPI query at start-up
    "LANGSMITH_TRACING": "false",
    "LANGSMITH_TRACING_V2": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGCHAIN_TRACING": "false",
}


def free_port() -> int:
    """A TCP port nothing listens on now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def langgraph_cli() -> str:
    """The ``langgraph`` command installed next to this Python."""
    exe = Path(sys.executable).with_name("langgraph")
    if not exe.exists():
        raise FileNotFoundError(f"no langgraph command next to {sys.executable}: pip install -e '.[test]'")
    return str(exe)


def server_config(folder: Path, env: dict[str, str]) -> Path:
    """Write ``folder/langgraph.json``: the repository's config with absolute paths and ``env`` as its env file."""
    config = json.loads((REPO / "langgraph.json").read_text())
    config["dependencies"] = [str((REPO / d).resolve()) for d in config["dependencies"]]
    config["graphs"] = {name: str((REPO / spec.split(":")[0]).resolve()) + ":" + spec.split(":")[1]
                        for name, spec in config["graphs"].items()}
    env_file = folder / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    config["env"] = str(env_file)
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class DevServer:
    """``langgraph dev --no-browser --no-reload`` on a free port, as a context manager."""

    def __init__(self, folder: Path, env: dict[str, str], *, start_timeout: float = 60.0):
        self.folder, self.env, self.start_timeout = folder, env, start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        self.proc: subprocess.Popen | None = None

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> DevServer:
        config = server_config(self.folder, self.env)
        env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
        cmd = [langgraph_cli(), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
               "--port", str(self.port), "--config", str(config)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # own process group: stopped as a whole
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"langgraph dev exited with status {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ok", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"langgraph dev not ready on {self.url} after {self.start_timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop()

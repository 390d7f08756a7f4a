"""`rayhistory collector` as a real process, for the tests that signal it (SIGTERM, SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.backends import ServerProcess, http_answers
from tests.conftest import free_port


class CollectorProcess:
    """Every setting given as a flag, or, with `via_env=True`, as its RAYHISTORY_* environment variable."""

    def __init__(self, storage: str, spool_dir: Path, ray_temp_root: Path, *, storage_options: str = "{}",
                 port: int | None = None, via_env: bool = False, **settings: object):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        settings = {"storage": storage, "storage_options": storage_options, "port": self.port,
                    "metrics_port": self.metrics_port,
                    "spool_dir": spool_dir, "ray_temp_root": ray_temp_root, "log_format": "text", **settings}
        argv = [sys.executable, "-m", "rayhistory", "collector"]
        env = {}
        for name, value in settings.items():
            if via_env:
                env["RAYHISTORY_" + name.upper()] = str(value)
            else:
                argv += ["--" + name.replace("_", "-"), str(value)]
        self.server = ServerProcess("collector", argv, lambda: http_answers(self.url + "/healthz"), env=env)

    def start(self) -> "CollectorProcess":
        self.server.start()
        return self

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        proc = self.server.proc
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout_s)
        self.server.proc = None
        return code

    def kill(self) -> None:
        proc = self.server.proc
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.server.proc = None

    def wait_flushed(self, timeout_s: float = 60.0) -> None:
        """Until everything acknowledged so far is in storage: the spool (active and sealed segments) is empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as resp:
                health = json.loads(resp.read())
            if health["spool_bytes"] == 0 and health["spool_segments"] == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"collector did not flush its spool in {timeout_s:.0f} s: {health}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        return self.server.log_tail()

    def cleanup(self) -> None:
        self.server.cleanup()


@contextlib.contextmanager
def collector_process(*args, **kwargs) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(*args, **kwargs)
    try:
        yield proc.start()
    finally:
        proc.cleanup()

"""A real Ray 2.60 head node on 127.0.0.1, isolated from other Ray clusters on the machine: what `make demo` and
the end-to-end tests start (one starter for both).

    cluster = raystart.start(env={...}, num_cpus=2)         # private temp dir, free ports for everything
    cluster.dashboard_url, cluster.gcs_address, cluster.session_dir, cluster.env (for drivers)
    cluster.run_driver("script.py")                          # a driver process connected to this cluster
    cluster.stop()                                           # what `ray stop` does, for this cluster only

`ray stop` itself stops every Ray process of the user on the machine (it finds them by name), which would
take down other tests' clusters; `stop()` sends the same SIGTERM, then SIGKILL to leftovers, but only to
processes whose command line names this cluster's session folder or GCS address. The temp dir is short (under /tmp),
because Ray's socket paths inside it must fit in 107 bytes.

Authentication is explicit and private to the cluster, never inherited: Ray 2.60 turns token authentication
on by itself when RAY_AUTH_MODE is unset and ~/.ray/auth_token exists (a first local `ray.init()` writes it),
and then every dashboard call without the token is a 401. `auth="disabled"` (the default) sets
RAY_AUTH_MODE=disabled; `auth="token"` generates a token in the cluster's temp dir (RAY_AUTH_TOKEN_PATH) and
sends it in every call made here (`cluster.auth_headers`). The user's RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH
never reach the cluster. A dashboard that answers 401 is reported as such (DashboardUnauthorized).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import ray_token

if TYPE_CHECKING:
    import psutil

VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"

AUTH_ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class DashboardUnauthorized(RuntimeError):
    """The dashboard answered 401: token authentication is on and the call had no (or the wrong) token."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_process_env() -> dict[str, str]:
    """This process's environment without the user's Ray auth settings (the cluster's own are explicit)."""
    return {k: v for k, v in os.environ.items() if k not in AUTH_ENV_KEYS}


# On a loopback-only machine Ray swaps 127.0.0.1 for the eth0 address without this (fixtures README).
# RAY_raylet_start_wait_time_s: on a busy 2-core machine the raylet can take longer than Ray's 30 s to
# register with the GCS, and `ray start` then fails though nothing is wrong
BASE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_raylet_start_wait_time_s": "120"}


def event_export_env(collector_port: int) -> dict[str, str]:
    """What makes Ray 2.60 POST its RayEvents to a collector on this machine (DESIGN.md)."""
    return {
        "RAY_enable_ray_event": "true",
        "RAY_enable_core_worker_ray_event_to_aggregator": "true",
        "RAY_DASHBOARD_AGGREGATOR_AGENT_EVENTS_EXPORT_ADDR": f"http://127.0.0.1:{collector_port}/v1/events",
        "RAY_DASHBOARD_AGGREGATOR_AGENT_EXPOSABLE_EVENT_TYPES": "ALL",
    }


@dataclass
class RayCluster:
    temp_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    session_dir: Path = field(init=False)
    start_output: str = ""
    auth_token: str = ""  # set with auth="token"

    @property
    def auth_headers(self) -> dict[str, str]:
        return ray_token.headers(self.auth_token) if self.auth_token else {}

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those whose command line names one of its session folders or its GCS
        address, and their descendants (workers rename themselves to `ray::IDLE` and the like). Not the
        temp dir alone: a collector watching this cluster names it too, and is not Ray's to stop."""
        import psutil  # with `ray` (which needs it): only where a Ray head is started, not in every install
        marks = (f"{self.temp_dir}/session_", self.gcs_address)
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if proc.pid != os.getpid() and any(m in cmdline for m in marks):
                    found[proc.pid] = proc
                    found.update((child.pid, child) for child in proc.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def run_driver(self, script: str | Path, args: tuple[str, ...] | list[str] = (), timeout_s: float = 180,
                   cwd: str | Path | None = None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a Python driver against this cluster (RAY_ADDRESS set, the cluster's env); raises if it fails."""
        env = {**base_process_env(), **self.env, "RAY_ADDRESS": self.gcs_address, **(extra_env or {})}
        done = subprocess.run([sys.executable, str(script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"driver {script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def stop(self, grace_s: float = 15.0) -> None:
        """`ray stop` for this cluster only: SIGTERM to its processes, SIGKILL to what is left after grace_s."""
        import psutil
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive + [p for p in self.processes() if p not in procs]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)

    def cleanup(self) -> None:
        self.stop(grace_s=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_http(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Wait for a 200 from `url`; a 401 is reported at once as what it is, not waited out as "not ready"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise DashboardUnauthorized(
                    f"{url} answered 401 Unauthorized: the Ray dashboard has token authentication on "
                    f"(RAY_AUTH_MODE=token, or ~/.ray/auth_token with RAY_AUTH_MODE unset) and this call "
                    f"{'sent a token it refused' if headers else 'sent no token'}") from None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not answering after {timeout_s:.0f} s")
        time.sleep(0.2)


def start(env: dict[str, str] | None = None, num_cpus: int = 2, temp_dir: str | Path | None = None,
          ports: dict[str, int] | None = None, timeout_s: float = 180, auth: str = "disabled") -> RayCluster:
    """Start a head node (`ray start --head`) with a private temp dir and free ports; wait for its dashboard.

    `env` is added to the environment of `ray start` and kept in `cluster.env` for drivers. `ports` overrides
    any of: port (GCS), dashboard-port, dashboard-agent-listen-port, dashboard-agent-grpc-port,
    metrics-export-port, node-manager-port, object-manager-port, runtime-env-agent-port, ray-client-server-port.
    `auth`: "disabled" or "token" (a fresh token of this cluster's own; see the module's doc).
    """
    if auth not in ("disabled", "token"):
        raise ValueError(f"auth must be 'disabled' or 'token', got {auth!r}")
    temp = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="rhray-", dir="/tmp"))
    names = ["port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "node-manager-port", "object-manager-port", "runtime-env-agent-port",
             "ray-client-server-port"]
    chosen = {name: free_port() for name in names} | (ports or {})
    auth_env = {"RAY_AUTH_MODE": auth}
    token = ""
    if auth == "token":
        temp.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(32)
        token_path = temp / "auth_token"
        token_path.write_text(token)
        token_path.chmod(0o600)
        auth_env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    cluster = RayCluster(temp, {**BASE_ENV, **(env or {}), **auth_env}, chosen, auth_token=token)
    argv = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp}"]
    argv += [f"--{name}={port}" for name, port in chosen.items()]
    try:
        done = subprocess.run(argv, env={**base_process_env(), **cluster.env}, capture_output=True, text=True,
                              timeout=timeout_s)
        cluster.start_output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{cluster.start_output[-4000:]}")
        wait_http(cluster.dashboard_url + "/api/version", timeout_s, cluster.auth_headers)
        sessions = [p for p in temp.iterdir() if p.name.startswith("session_2") and not p.is_symlink()]
        cluster.session_dir = max(sessions)
    except BaseException:
        cluster.cleanup()
        raise
    return cluster

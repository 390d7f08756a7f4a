"""`make demo`: record a real Ray session, end it, and serve its Ray Dashboard from local storage.

    python scripts/demo.py [--workdir .demo] [--port 8080] [--serve-only] [--no-serve]

1. starts `rayhistory collector` on 127.0.0.1, storing into file://WORKDIR/store;
2. starts a real Ray head on 127.0.0.1 (free ports, a private temp root, authentication explicitly off and
   private to it, so ~/.ray/auth_token or RAY_AUTH_MODE=token in your environment change nothing;
   rayhistory/raystart.py, the same starter the end-to-end tests use) with Ray's event export pointed at the
   collector;
3. runs the sample workload below as a Ray driver: tasks, nested tasks, a failing task, a killed actor, an
   actor whose constructor fails, and a job submitted through the Job Submission API;
4. stops Ray, then the collector (SIGTERM: its final flush and log upload), and marks the session dead with
   the same code as `rayhistory mark-dead`;
5. starts `rayhistory server` on that storage and prints the session's dashboard URL (Ctrl-C stops it).

No Kubernetes, no cloud credentials. Every run records one more session; --serve-only serves what earlier
runs recorded. Nothing this script started runs on after it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import ray
from ray.job_submission import JobStatus, JobSubmissionClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout: the package is importable without installing

from rayhistory.index import SessionIndex, mark_dead  # noqa: E402
from rayhistory.layout import SessionRef  # noqa: E402
from rayhistory.store import Store  # noqa: E402
from rayhistory import raystart  # noqa: E402
from rayhistory.raystart import free_port  # noqa: E402

BIN = Path(sys.executable).parent
NAMESPACE, CLUSTER = "local", "demo"
SUBMISSION_ID = "demo_submitted_job"
# The collector polls the head's dashboard for what Ray sends no events about (placement groups, submitted
# jobs) at this interval, and uploads new log bytes.
POLL_INTERVAL_S = 3


# ---- the sample workload (run as a Ray driver: demo.py --run-workload) ------------------------------

@ray.remote
def square(x: int) -> int:
    time.sleep(0.05)
    return x * x


@ray.remote
def child(x: int) -> int:
    return x + 100


@ray.remote
def parent(x: int) -> int:
    return sum(ray.get([child.remote(x), child.remote(x + 1)]))


@ray.remote(max_retries=0)
def boom() -> None:
    raise ValueError("intentional task failure (rayhistory demo)")


@ray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


@ray.remote
class BadInit:
    def __init__(self) -> None:
        raise RuntimeError("intentional actor constructor failure (rayhistory demo)")

    def ping(self) -> str:
        return "pong"


@ray.remote
def job_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def run_workload(dashboard_url: str) -> dict:
    ray.init(namespace="rayhistory-demo")  # RAY_ADDRESS names the demo's head
    summary: dict = {"job_id": ray.get_runtime_context().get_job_id()}
    summary["squares"] = sum(ray.get([square.remote(i) for i in range(20)]))
    summary["nested"] = ray.get([parent.remote(i) for i in range(3)])
    try:
        ray.get(boom.remote())
    except ray.exceptions.RayTaskError as exc:
        summary["failed_task"] = type(exc).__name__

    counter = Counter.options(name="killed_actor").remote()
    summary["counter"] = ray.get([counter.incr.remote() for _ in range(3)])[-1]
    ray.kill(counter)
    bad = BadInit.options(name="bad_init_actor").remote()
    try:
        ray.get(bad.ping.remote())
    except ray.exceptions.RayActorError as exc:
        summary["bad_init_actor"] = type(exc).__name__

    client = JobSubmissionClient(dashboard_url)
    client.submit_job(
        entrypoint=shlex.join([sys.executable, str(Path(__file__).resolve()), "--run-job"]),
        submission_id=SUBMISSION_ID, metadata={"purpose": "rayhistory demo"},
    )
    deadline = time.monotonic() + 120
    status = client.get_job_status(SUBMISSION_ID)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(SUBMISSION_ID)
    summary["submitted_job"] = {"id": SUBMISSION_ID, "status": str(status)}
    # Task events reach Ray's aggregator about once a second: let the last ones go before the driver exits.
    time.sleep(3)
    return summary


def run_job() -> None:
    """The submitted job's entrypoint."""
    ray.init()
    print("submitted job result:", sum(ray.get([job_square.remote(i) for i in range(5)])))


# ---- orchestration ---------------------------------------------------------------------------------

def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Process:
    """A child in its own process group, output to a log file; stop() ends the whole group."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_until(self, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc.poll() is not None:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} ({self.log_path}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM to the leader (graceful), then SIGKILL to anything left in its group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode


def record_session(workdir: Path, store_url: str) -> SessionRef:
    """Steps 1-4: a real Ray session recorded by the collector, ended and marked dead."""
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    collector_port, dashboard_port = free_port(), free_port()
    # Ray's temp root: short (socket paths), private, and known to the collector before Ray starts.
    temp_root = Path(tempfile.mkdtemp(prefix="rh-demo-", dir="/tmp"))
    collector = Process("collector", [
        str(BIN / "rayhistory"), "collector", "--storage", store_url, "--host", "127.0.0.1",
        "--port", str(collector_port), "--metrics-port", "-1", "--namespace", NAMESPACE, "--cluster-name", CLUSTER,
        "--ray-temp-root", str(temp_root), "--spool-dir", str(workdir / "spool"),
        "--flush-interval", "1", "--log-upload-interval", str(POLL_INTERVAL_S), "--log-format", "text",
        "--dashboard-url", f"http://127.0.0.1:{dashboard_port}",
    ], log_dir)
    cluster = None
    try:
        collector.wait_until(lambda: http_ok(f"http://127.0.0.1:{collector_port}/healthz"), timeout_s=60)
        say(f"collector listening on 127.0.0.1:{collector_port}, storing into {store_url}")
        say("starting a Ray head on 127.0.0.1 (about 10 s)")
        cluster = raystart.start(env=raystart.event_export_env(collector_port), temp_dir=temp_root,
                                    ports={"dashboard-port": dashboard_port})
        session = cluster.session_dir.name
        say(f"Ray session {session} is up; its live dashboard: {cluster.dashboard_url}")
        say("running the sample workload (tasks, actors, a failing task, a submitted job)")
        driver = cluster.run_driver(__file__, ["--run-workload", cluster.dashboard_url], timeout_s=300)
        say(f"workload done: {json.loads(driver.stdout.strip().splitlines()[-1])}")
        time.sleep(POLL_INTERVAL_S + 1)  # one more poll of the head sees the submitted job's final state
        say("stopping Ray")
        cluster.stop()
        say("stopping the collector (final flush and log upload)")
        code = collector.stop(grace_s=60)
        if code != 0:
            raise RuntimeError(f"the collector's final flush failed (exit {code}); see {collector.log_path}")
    finally:
        collector.stop(grace_s=60)
        if cluster is not None:
            cluster.cleanup()
        shutil.rmtree(temp_root, ignore_errors=True)
    ref = SessionRef(NAMESPACE, CLUSTER, session)
    asyncio.run(mark_dead(Store(store_url), NAMESPACE, CLUSTER, session, reason="demo: ray stopped"))
    say(f"session {ref.tail} marked dead")
    return ref


def newest_dead_session(store_url: str) -> SessionRef | None:
    sessions = asyncio.run(SessionIndex(Store(store_url)).sessions())
    dead = [s for s in sessions if s.state == "dead"]
    return dead[0].ref if dead else None  # sessions() lists newest first


def serve(store_url: str, workdir: Path, port: int, ref: SessionRef | None) -> int:
    """Step 5: the history server on the demo's storage, in the foreground until Ctrl-C."""
    if not port_is_free(port):
        port = free_port()
    server = Process("server", [
        str(BIN / "rayhistory"), "server", "--storage", store_url, "--host", "127.0.0.1", "--port", str(port),
        "--internal-port", str(free_port()), "--insecure-internal-port", "--auth", "off", "--log-format", "text",
    ], workdir / "logs")
    base = f"http://127.0.0.1:{port}/"
    try:
        server.wait_until(lambda: http_ok(base + "clusters"), timeout_s=60)
        say(f"history server running; session picker: {base}")
        if ref is not None:
            print(f"\n  The dead session's Ray Dashboard:  {base}s/{ref.namespace}/{ref.cluster}/{ref.session}/\n",
                  flush=True)
        say("Ctrl-C stops the server")
        with contextlib.suppress(KeyboardInterrupt):
            server.proc.wait()
        return 0
    finally:
        server.stop(grace_s=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo", help="storage, spool and logs of the demo")
    parser.add_argument("--port", type=int, default=8080, help="the history server's port (another if busy)")
    parser.add_argument("--serve-only", action="store_true", help="serve what earlier runs recorded")
    parser.add_argument("--no-serve", action="store_true", help="record a session, start no server")
    parser.add_argument("--run-workload", metavar="DASHBOARD_URL", help=argparse.SUPPRESS)
    parser.add_argument("--run-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_workload:
        print(json.dumps(run_workload(args.run_workload)))
        return 0
    if args.run_job:
        run_job()
        return 0
    # SIGTERM (a CI runner, `kill`) stops like Ctrl-C: every `finally` stops what this script started
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store_url = f"file://{workdir / 'store'}"
    if args.serve_only:
        ref = newest_dead_session(store_url)
        if ref is None:
            say(f"no recorded session in {store_url}: run without --serve-only first")
            return 1
    else:
        ref = record_session(workdir, store_url)
    if args.no_serve:
        print(f"recorded {ref.tail} in {store_url}", flush=True)
        return 0
    return serve(store_url, workdir, args.port, ref)


if __name__ == "__main__":
    sys.exit(main())

"""Ray driver for the collector's end-to-end tests (run by tests/e2e/test_collector_ray.py; RAY_ADDRESS set).

    python collector_workload.py full DASHBOARD_URL   normal, multi-return and nested tasks, a failing task, a task
                                                      retried after its worker died, actors (one whose constructor
                                                      fails, one killed, one with a failing method, one restarted
                                                      after its process died), a placement group, and a job
                                                      submitted through the Job Submission API; leaves a detached
                                                      actor and a detached placement group alive; prints a JSON
                                                      summary
    python collector_workload.py stream SECONDS       small tasks in waves for SECONDS: a steady event stream
"""

import json
import os
import sys
import tempfile
import time

import ray


@ray.remote
def square(x):
    return x * x


@ray.remote(num_returns=3)
def split3(x):
    return x, x + 1, x + 2


@ray.remote
def child(x):
    return x + 100


@ray.remote
def parent(x):
    print(f"parent({x}) asks two children")  # a task log line the pipeline test reads back
    return sum(ray.get([child.remote(x), child.remote(x + 1)]))


@ray.remote(max_retries=0)
def boom():
    raise ValueError("intentional task failure")


@ray.remote(max_retries=2)
def flaky(marker: str) -> str:
    """Its first attempt's worker dies (attempt 0 FAILED with WORKER_DIED); the retry finishes."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second attempt"


@ray.remote(max_restarts=1)
class Phoenix:
    """Restarted once after its process dies: its constructor runs as attempt 0 and attempt 1."""

    def pid(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(1)


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def fail(self):
        raise RuntimeError("intentional actor-task failure")


@ray.remote
class BadInit:
    def __init__(self):
        raise RuntimeError("intentional actor constructor failure")

    def ping(self):
        return "pong"


def full(dashboard_url: str) -> dict:
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.placement_group import placement_group, remove_placement_group

    summary = {"job_id": ray.get_runtime_context().get_job_id()}
    assert ray.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
    assert [ray.get(list(split3.remote(i))) for i in range(3)] == [[i, i + 1, i + 2] for i in range(3)]
    assert ray.get([parent.remote(i) for i in range(3)]) == [2 * i + 201 for i in range(3)]
    try:
        ray.get(boom.remote())
    except ray.exceptions.RayTaskError:
        summary["boom"] = "failed"
    bad = BadInit.options(name="bad_init_actor").remote()
    try:
        ray.get(bad.ping.remote())
    except ray.exceptions.RayActorError:
        summary["bad_init"] = "dead"
    victim = Counter.options(name="killed_actor").remote()
    ray.get([victim.incr.remote() for _ in range(3)])
    ray.kill(victim)
    alive = Counter.options(name="alive_actor").remote()
    ray.get([alive.incr.remote() for _ in range(3)])
    try:
        ray.get(alive.fail.remote())
    except ray.exceptions.RayTaskError:
        summary["actor_task"] = "failed"
    marker = os.path.join(tempfile.mkdtemp(prefix="rh-flaky-"), "first-attempt-ran")
    summary["flaky"] = ray.get(flaky.remote(marker))
    phoenix = Phoenix.options(name="restarted_actor").remote()
    first_pid = ray.get(phoenix.pid.remote())
    try:
        ray.get(phoenix.die.remote())
    except ray.exceptions.RayActorError:
        pass
    deadline = time.time() + 60
    while time.time() < deadline:  # calls fail while it restarts; the restarted process answers
        try:
            summary["restarted"] = ray.get(phoenix.pid.remote(), timeout=10) != first_pid
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)
    pg = placement_group([{"CPU": 0.5}], strategy="PACK", name="e2e_pg")
    ray.get(pg.ready())
    remove_placement_group(pg)
    # left alive at `ray stop`, for the pipeline test (docs/dead-sessions.md: how a dead session shows them)
    keeper = Counter.options(name="detached_actor", lifetime="detached").remote()
    ray.get(keeper.incr.remote())
    kept_pg = placement_group([{"CPU": 0.1}], strategy="PACK", name="e2e_pg_kept", lifetime="detached")
    ray.get(kept_pg.ready())

    client = JobSubmissionClient(dashboard_url)
    entrypoint = (f"{sys.executable} -c \"import ray; ray.init(); "
                  f"print(sum(ray.get([ray.remote(lambda x: x * 2).remote(i) for i in range(4)])))\"")
    sub_id = client.submit_job(entrypoint=entrypoint, submission_id=f"e2e_job_{int(time.time())}")
    deadline = time.time() + 120
    while time.time() < deadline:
        status = client.get_job_status(sub_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(0.5)
    summary["submission_id"] = sub_id
    summary["submission_status"] = str(status)
    time.sleep(2)  # let this driver's core worker send its last task events
    return summary


def stream(seconds: float) -> dict:
    deadline = time.time() + seconds
    waves = 0
    while time.time() < deadline:
        ray.get([square.remote(i) for i in range(20)])
        waves += 1
        time.sleep(0.2)
    time.sleep(2)
    return {"job_id": ray.get_runtime_context().get_job_id(), "waves": waves}


if __name__ == "__main__":
    ray.init()
    mode = sys.argv[1]
    result = full(sys.argv[2]) if mode == "full" else stream(float(sys.argv[2]))
    print("SUMMARY " + json.dumps(result))

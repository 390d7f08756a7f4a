"""What the events prove about a task attempt that no terminal transition ended (docs/dead-sessions.md):
pure functions of the attempt's profile events and of the actor, worker and job it belongs to, which the
snapshot builder (server/snapshot.py) applies when it builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .snapshot_model import Actor, DriverJob, Worker

EXECUTE_PROFILE_EVENTS = ("task:execute", "task:store_outputs")
# ray.rpc.WorkerExitType: Ray's GCS prints the number in its failure message
_WORKER_EXIT_TYPES = {"SYSTEM_ERROR": 0, "INTENDED_SYSTEM_EXIT": 1, "USER_ERROR": 2, "INTENDED_USER_EXIT": 3,
                      "NODE_OUT_OF_MEMORY": 4}


def execution_closed_ns(profile: list[tuple[int, int, str]]) -> int:
    """When a worker's profile events say the attempt's execution ended (its outputs stored), or 0."""
    closed = [end for end, _, name in profile if name in EXECUTE_PROFILE_EVENTS and end > 0]
    executed = any(name == "task:execute" and end > 0 for end, _, name in profile)
    return max(closed) if executed else 0


def first_alive_after(actor: "Actor | None", after_ns: int) -> int:
    if actor is None:
        return 0
    return next((t.ts_ns for t in actor.transitions if t.state == "ALIVE" and t.ts_ns >= after_ns), 0)


def worker_death(worker: "Worker | None") -> tuple[int, str]:
    """(end ns, "WORKER_DIED\nmessage") of a worker whose lifecycle says DEAD, as Ray's GCS fails the tasks
    that ran on it; (0, "") otherwise."""
    if worker is None:
        return 0, ""
    dead = next((t for t in reversed(worker.transitions) if t.state == "DEAD"), None)
    if dead is None:
        return 0, ""
    info = dead.info
    end_ns = int(info.get("end_time_ms") or 0) * 1_000_000 or dead.ts_ns
    death = info.get("death_info") or {}
    exit_type = _WORKER_EXIT_TYPES.get(str(death.get("exit_type", "SYSTEM_ERROR")), 0)
    return end_ns, (f"WORKER_DIED\nWorker running the task ({{task_id}}) died with exit_type: {exit_type} "
                    f"with error_message: {death.get('exit_detail', '')}")


def job_end(job: "DriverJob | None") -> tuple[int, str]:
    """(end ns, reason) of a driver job whose lifecycle says FINISHED: Ray's GCS fails its unfinished tasks."""
    if job is None:
        return 0, ""
    finished = next((t.ts_ns for t in job.transitions if t.state == "FINISHED"), 0)
    if not finished:
        return 0, ""
    return finished, (f"WORKER_DIED\nJob finishes ({job.job_id}) as driver exits. Marking all non-terminal "
                      "tasks as failed.")


SESSION_ENDED_REASON = "WORKER_DIED\nThe session ended before this task finished (no terminal state was recorded)."

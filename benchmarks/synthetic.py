"""Synthetic Ray 2.60 sessions shaped like the fixture session, as the collector stores them.

Per normal task, like the fixture's: a TASK_DEFINITION_EVENT, the owner's TASK_LIFECYCLE_EVENTs
(PENDING_ARGS_AVAIL + PENDING_NODE_ASSIGNMENT, then SUBMITTED_TO_WORKER + FINISHED, with task log
offsets), the executing worker's RUNNING event, and a TASK_PROFILE_EVENT with the four events a Python
worker records. A share of the tasks are actor tasks on a pool of actors (each with its definition and
lifecycle events), a few fail, and tasks are spread over several driver jobs, nodes and workers.
Events are cut into batches of up to 1,000 per node (the aggregator agent's batch size), JSON lines,
gzip'd, under rayhistory.layout.event_batch_key.

    python -m benchmarks.synthetic 100000   # prints the number of batches, events and bytes
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import sys
import time
from collections.abc import Iterator

from rayhistory import layout

SESSION = "session_2026-11-23_13-47-55_556257_9670"
BATCH_EVENTS = 1000
T0_NS = 1_795_441_689_000_000_000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_prefix_cache: dict[int, str] = {}


def _ts(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    prefix = _prefix_cache.get(seconds)
    if prefix is None:
        prefix = _prefix_cache[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{prefix}.{frac:09d}Z"


class _Session:
    def __init__(self, n_tasks: int, seed: int):
        self.rng = random.Random(seed)
        self.n_tasks = n_tasks
        self.n_jobs = 4
        self.n_nodes = max(1, min(8, n_tasks // 10_000 + 1))
        self.nodes = [bytes([i]) * 28 for i in range(1, self.n_nodes + 1)]
        self.node_b64 = [_b64(n) for n in self.nodes]
        self.n_workers = max(4, n_tasks // 200)
        self.workers = [self.rng.randbytes(28) for _ in range(self.n_workers)]
        self.n_actors = max(3, n_tasks // 1000)
        self.actors = [self.rng.randbytes(12) + (1 + i % self.n_jobs).to_bytes(4, "little")
                       for i in range(self.n_actors)]
        self.event_seq = 0

    def envelope(self, kind: str, source: str, ts_ns: int, node: int, field: str, payload: dict) -> tuple[int, str]:
        self.event_seq += 1
        event = {"eventId": _b64(self.event_seq.to_bytes(28, "big")), "sourceType": source, "eventType": kind,
                 "timestamp": _ts(ts_ns), "severity": "INFO", "sessionName": SESSION, field: payload,
                 "nodeId": self.node_b64[node], "message": ""}
        return node, json.dumps(event, separators=(",", ":"))

    def events(self) -> Iterator[tuple[int, str]]:
        rng = self.rng
        for n in range(self.n_nodes):
            t = T0_NS + n * 1_000_000
            yield self.envelope("NODE_DEFINITION_EVENT", "GCS", t, n, "nodeDefinitionEvent", {
                "nodeId": self.node_b64[n], "nodeIpAddress": f"10.0.0.{n + 1}", "labels": {},
                "startTimestamp": _ts(t), "hostname": f"node-{n}", "nodeName": f"10.0.0.{n + 1}",
                "instanceId": "", "instanceTypeName": ""})
            resources = {"CPU": 16.0, "memory": 6.4e10, "object_store_memory": 2e10, f"node:10.0.0.{n + 1}": 1.0}
            if n == 0:
                resources["node:__internal_head__"] = 1.0
            yield self.envelope("NODE_LIFECYCLE_EVENT", "GCS", t, n, "nodeLifecycleEvent", {
                "nodeId": self.node_b64[n], "stateTransitions": [
                    {"timestamp": _ts(t), "resources": resources, "state": "ALIVE", "aliveSubState": "UNSPECIFIED"}]})
        for j in range(1, self.n_jobs + 1):
            t = T0_NS + j * 10_000_000
            job = _b64(j.to_bytes(4, "little"))
            yield self.envelope("DRIVER_JOB_DEFINITION_EVENT", "GCS", t, 0, "driverJobDefinitionEvent", {
                "jobId": job, "driverPid": str(10000 + j), "driverNodeId": self.node_b64[0],
                "entrypoint": f"python workload_{j}.py", "config": {"serializedRuntimeEnv": "{}", "metadata": {}}})
            yield self.envelope("DRIVER_JOB_LIFECYCLE_EVENT", "GCS", t, 0, "driverJobLifecycleEvent", {
                "jobId": job, "stateTransitions": [{"state": "CREATED", "timestamp": _ts(t)}]})
        for w, worker in enumerate(self.workers):
            node = w % self.n_nodes
            t = T0_NS + 50_000_000 + w * 1000
            yield self.envelope("WORKER_DEFINITION_EVENT", "GCS", t, node, "workerDefinitionEvent", {
                "workerId": _b64(worker), "nodeId": self.node_b64[node], "pid": 20000 + w, "workerType": "WORKER"})
            yield self.envelope("WORKER_LIFECYCLE_EVENT", "GCS", t, node, "workerLifecycleEvent", {
                "workerId": _b64(worker), "stateTransitions": [{
                    "timestamp": _ts(t), "workerLaunchTimeMs": str(t // 1_000_000 - 900),
                    "workerLaunchedTimeMs": str(t // 1_000_000 - 100), "startTimeMs": str(t // 1_000_000),
                    "state": "ALIVE", "endTimeMs": "0"}], "jobId": ""})
        for a, actor in enumerate(self.actors):
            node, worker = a % self.n_nodes, self.workers[a % self.n_workers]
            t = T0_NS + 60_000_000 + a * 10_000
            yield self.envelope("ACTOR_DEFINITION_EVENT", "GCS", t, node, "actorDefinitionEvent", {
                "actorId": _b64(actor), "jobId": _b64(actor[12:]), "name": f"actor_{a}", "rayNamespace": "bench",
                "serializedRuntimeEnv": "{}", "className": "Counter", "isDetached": False, "requiredResources": {},
                "placementGroupId": "", "labelSelector": {}, "callSite": "", "parentId": "", "refIds": {}})
            yield self.envelope("ACTOR_LIFECYCLE_EVENT", "GCS", t, node, "actorLifecycleEvent", {
                "actorId": _b64(actor), "stateTransitions": [
                    {"timestamp": _ts(t), "state": "DEPENDENCIES_UNREADY"},
                    {"timestamp": _ts(t + 2_000_000), "state": "PENDING_CREATION"},
                    {"timestamp": _ts(t + 9_000_000), "state": "ALIVE", "nodeId": self.node_b64[node],
                     "workerId": _b64(worker), "pid": 20000 + a % self.n_workers, "port": 10000 + a,
                     "reprName": "", "restartReason": "ACTOR_FAILURE"}]})
        for i in range(self.n_tasks):
            yield from self.task_events(i, rng)

    def task_events(self, i: int, rng: random.Random) -> Iterator[tuple[int, str]]:
        job_no = 1 + i % self.n_jobs
        job = job_no.to_bytes(4, "little")
        actor_task = i % 5 == 4
        if actor_task:
            actor = self.actors[i % self.n_actors]
            task_id = (i + 1).to_bytes(8, "big") + actor
            job = actor[12:]
        else:
            task_id = (i + 1).to_bytes(8, "big") + b"\xff" * 12 + job
        w = i % self.n_workers
        node = w % self.n_nodes
        tid, job_b64, node_b64, worker_b64 = _b64(task_id), _b64(job), self.node_b64[node], _b64(self.workers[w])
        parent = _b64(b"\xff" * 20 + job)
        t = T0_NS + 100_000_000 + i * 200_000
        failed = i % 97 == 0
        func = {"pythonFunctionDescriptor": {"moduleName": "workload", "functionName": f"fn_{i % 40}",
                                             "functionHash": "e8097dd6099b4c639a0ba61a17cd7b29",
                                             "className": "Counter" if actor_task else ""}}
        common = {"requiredResources": {"CPU": 1.0}, "jobId": job_b64, "parentTaskId": parent,
                  "placementGroupId": "////////////////////////", "serializedRuntimeEnv": "{}", "taskAttempt": 0,
                  "language": "PYTHON", "refIds": {}, "labelSelector": {}, "isDetachedActor": False}
        if actor_task:
            yield self.envelope("ACTOR_TASK_DEFINITION_EVENT", "CORE_WORKER", t, 0, "actorTaskDefinitionEvent", {
                "taskId": tid, "actorFunc": func, "actorTaskName": f"Counter.fn_{i % 40}",
                "actorId": _b64(task_id[8:24]), **common})
        else:
            yield self.envelope("TASK_DEFINITION_EVENT", "CORE_WORKER", t, 0, "taskDefinitionEvent", {
                "taskId": tid, "taskFunc": func, "taskName": f"fn_{i % 40}", "taskType": "NORMAL_TASK", **common})
        yield self.envelope("TASK_LIFECYCLE_EVENT", "CORE_WORKER", t + 500_000, 0, "taskLifecycleEvent", {
            "taskId": tid, "stateTransitions": [
                {"state": "PENDING_ARGS_AVAIL", "timestamp": _ts(t)},
                {"state": "PENDING_NODE_ASSIGNMENT", "timestamp": _ts(t + 500_000)}],
            "jobId": job_b64, "taskAttempt": 0, "nodeId": "", "workerId": "", "workerPid": 0})
        start = t + 2_000_000
        end = start + rng.randint(1_000_000, 60_000_000)
        yield self.envelope("TASK_LIFECYCLE_EVENT", "CORE_WORKER", start, node, "taskLifecycleEvent", {
            "taskId": tid, "stateTransitions": [{"state": "RUNNING", "timestamp": _ts(start)}],
            "workerPid": 20000 + w, "jobId": job_b64, "taskAttempt": 0, "nodeId": "", "workerId": ""})
        log = f"/tmp/ray/{SESSION}/logs/worker-{self.workers[w].hex()}-ffffffff-{20000 + w}"
        final = {"taskId": tid, "stateTransitions": [
            {"state": "SUBMITTED_TO_WORKER", "timestamp": _ts(t + 1_000_000)},
            {"state": "FAILED" if failed else "FINISHED", "timestamp": _ts(end)}],
            "nodeId": node_b64, "workerId": worker_b64, "jobId": job_b64, "taskAttempt": 0, "workerPid": 0,
            "taskLogInfo": {"stdoutFile": log + ".out", "stderrFile": log + ".err", "stdoutStart": str(i * 10),
                            "stdoutEnd": str(i * 10 + 10), "stderrStart": str(i * 10), "stderrEnd": str(i * 10 + 10)}}
        if failed:
            final["rayErrorInfo"] = {"errorMessage": "ValueError: synthetic failure", "errorType": "TASK_EXECUTION_EXCEPTION"}
        yield self.envelope("TASK_LIFECYCLE_EVENT", "CORE_WORKER", end, 0, "taskLifecycleEvent", final)
        span = end - start
        profile = [("task:deserialize_arguments", start, start + span // 10), ("task:execute", start + span // 10, end - span // 10),
                   ("task:store_outputs", end - span // 10, end - 1000), (f"task::fn_{i % 40}", start - 20_000, end)]
        yield self.envelope("TASK_PROFILE_EVENT", "CORE_WORKER", end, node, "taskProfileEvents", {
            "taskId": tid, "jobId": job_b64, "profileEvents": {
                "componentType": "worker", "componentId": worker_b64, "nodeIpAddress": f"10.0.0.{node + 1}",
                "events": [{"startTime": str(s), "endTime": str(e), "extraData":
                            '{"name": "__main__.fn"}' if name.startswith("task::") else "{}", "eventName": name}
                           for name, s, e in profile]}})


def generate_session(n_tasks: int, seed: int = 0, ref: layout.SessionRef | None = None
                     ) -> tuple[layout.SessionRef, dict[str, bytes], int]:
    """(session, {event batch key: gzip'd JSON lines}, number of events) for a session of n_tasks tasks."""
    ref = ref or layout.SessionRef("bench", f"synthetic-{n_tasks}", SESSION)
    session = _Session(n_tasks, seed)
    pending: dict[int, list[str]] = {}
    batches: dict[str, bytes] = {}
    seq = 0
    count = 0

    def flush(node: int) -> None:
        nonlocal seq
        lines = pending.pop(node)
        key = layout.event_batch_key(ref, session.nodes[node].hex(), "synthetic", seq, at_ms=T0_NS // 1_000_000 + seq)
        batches[key] = gzip.compress("\n".join(lines).encode(), compresslevel=1)
        seq += 1

    for node, line in session.events():
        pending.setdefault(node, []).append(line)
        count += 1
        if len(pending[node]) >= BATCH_EVENTS:
            flush(node)
    for node in list(pending):
        flush(node)
    return ref, batches, count


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    t0 = time.perf_counter()
    _, stored, events = generate_session(n)
    print(json.dumps({"tasks": n, "events": events, "batches": len(stored),
                      "bytes": sum(len(b) for b in stored.values()), "seconds": round(time.perf_counter() - t0, 2)}))

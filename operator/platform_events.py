"""Kubernetes Events kept: what happened to an injected RayCluster, its Pods and its owner, in its sessions.

Ray's own dashboard shows these only while its head runs and may watch Kubernetes, and never the event
that killed the head itself. The operator sees every one of them (one cluster-wide watch of core/v1
Events, through Kopf), from the cluster's creation to its deletion:
- an event about a RayCluster counts if the cluster is injected (the `injected` index); about a RayJob or
  RayService, for each injected cluster it owns; about a Pod, for the cluster its `ray.io/cluster` label
  names (one GET per pod, cached; a pod that is gone, one GET per `GONE_POD_TTL_S`; only for pods named
  like an injected cluster of the namespace);
- it belongs to the session the cluster's head was running when it happened: the newest of the cluster's
  sessions in the index that started before it; before the first session (scheduling, image pulls), to
  the first. Until a session exists it waits in memory (bounded);
- records are deduplicated by uid and version (count, time, resourceVersion), batched, and flushed every
  `platform_events_flush_interval` seconds (and before the cluster's sessions are marked dead) as one
  object per session under its prefix (layout.platform_events_batch_key: the key comes from the session
  and the operator's writer id, never from an event);
- a container that ended badly (OOMKilled, Error) is in its pod's status, not in an Event: the pods the
  operator deletes on the cluster's deletion come back from the API with their last status, and each such
  termination (the current or the last state of a container) is kept as an event of the pod;
- per session at most `platform_events_max_per_session` distinct events and `platform_events_max_bytes`
  stored bytes; what is over is dropped and counted (rayhistory_operator_platform_events_total).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cachetools

from rayhistory import layout
from rayhistory.index import SessionIndex, SessionInfo
from rayhistory.layout import SessionRef
from rayhistory.platform_events import PlatformEventRecord, decode_batch, encode_batch, involved_object, record_from_event
from rayhistory.store import Store

from .kube import Kube, object_path
from .metrics import OperatorMetrics

log = logging.getLogger(__name__)

CLUSTER_LABEL = "ray.io/cluster"
OWNER_KINDS = ("RayJob", "RayService")
MAX_POD_CACHE = 10_000
# a gone pod's later events (its deletion's Killing, ...) come in bursts: one GET per this many seconds,
# and a pod that comes back under the name is seen again soon after
GONE_POD_TTL_S = 60.0
MAX_SESSIONS_TRACKED = 1_000
# KubeRay names a cluster's pods after it, cutting long names: only pods that start like one of the
# namespace's injected clusters are looked up.
POD_PREFIX_CHARS = 30


# ---- pure decisions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class InjectedCluster:
    """What the operator's index keeps of an injected RayCluster."""

    namespace: str
    name: str
    history: str  # "<namespace>/<name>" of its RayHistory
    owners: tuple[tuple[str, str], ...] = ()  # (kind, name) of its RayJob / RayService


def injected_cluster(namespace: str, name: str, meta: dict[str, Any], history_annotation: str) -> InjectedCluster:
    owners = tuple((r.get("kind", ""), r.get("name", "")) for r in meta.get("ownerReferences") or []
                   if r.get("kind") in OWNER_KINDS)
    return InjectedCluster(namespace, name, (meta.get("annotations") or {}).get(history_annotation, ""), owners)


def clusters_for(kind: str, name: str, namespace: str, injected: list[InjectedCluster],
                 pod_cluster: str | None = None) -> list[InjectedCluster]:
    """The injected clusters an event about (kind, name) in `namespace` belongs to (`pod_cluster`: the
    label of the pod, for kind Pod)."""
    same = [c for c in injected if c.namespace == namespace]
    if kind == "RayCluster":
        return [c for c in same if c.name == name]
    if kind in OWNER_KINDS:
        return [c for c in same if (kind, name) in c.owners]
    if kind == "Pod" and pod_cluster:
        return [c for c in same if c.name == pod_cluster]
    return []


def may_be_pod_of(pod: str, namespace: str, injected: list[InjectedCluster]) -> bool:
    return any(c.namespace == namespace and pod.startswith(c.name[:POD_PREFIX_CHARS]) for c in injected)


def session_for(sessions: list[SessionInfo], time_ms: int) -> SessionInfo | None:
    """The session the cluster's head was running at `time_ms`: the newest that started by then; an event
    before every session (the head being scheduled, pulled, started) belongs to the first one."""
    if not sessions:
        return None
    ordered = sorted(sessions, key=lambda s: (s.start_ms, s.session))
    started = [s for s in ordered if s.start_ms <= time_ms]
    return started[-1] if started else ordered[0]


def container_terminations(pod: dict[str, Any], cluster: str) -> list[PlatformEventRecord]:
    """What a pod's container statuses say of containers that ended badly (OOMKilled, Error, ...), as events:
    the kubelet reports these in the pod's status, not as Kubernetes Events. Each termination once: its uid
    comes from the pod's uid, the container and when it finished."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    out = []
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        for when in ("state", "lastState"):
            ended = ((container.get(when) or {}).get("terminated")) or {}
            reason = ended.get("reason") or ""
            if not reason or reason == "Completed":
                continue
            finished = ended.get("finishedAt") or ""
            digest = hashlib.sha256(f"{container.get('name')}\n{finished}".encode()).hexdigest()[:16]
            event = {
                "metadata": {"uid": f"{meta.get('uid', '')}-{digest}", "namespace": meta.get("namespace")},
                "involvedObject": {"kind": "Pod", "name": meta.get("name"), "namespace": meta.get("namespace")},
                "reason": reason, "type": "Warning", "source": {"component": "kubelet"}, "lastTimestamp": finished,
                "message": f"container {container.get('name')} terminated: {reason} (exit code "
                           f"{ended.get('exitCode')}), restarts {container.get('restartCount', 0)}"
                           + (f": {ended['message']}" if ended.get("message") else ""),
            }
            try:
                out.append(record_from_event(event, cluster))
            except layout.LayoutError:
                continue
    return out


def fit_budget(records: list[PlatformEventRecord], versions: dict[str, tuple], max_events: int,
               ) -> tuple[list[PlatformEventRecord], int]:
    """(records to write, how many are dropped): versions newer than what was kept, and new events while the
    session has room for them (warnings first, then the newest)."""
    newer = [r for r in records if r.uid not in versions or r.version > versions[r.uid]]
    known = [r for r in newer if r.uid in versions]
    fresh = sorted((r for r in newer if r.uid not in versions), key=lambda r: (r.type != "Warning", -r.time_ns))
    room = max(0, max_events - len(versions))
    return known + fresh[:room], len(fresh) - min(room, len(fresh))


# ---- the recorder ----------------------------------------------------------------------------------

@dataclass
class KeptSession:
    """What is stored for one session already (read back once per operator process)."""

    versions: dict[str, tuple] = field(default_factory=dict)
    stored_bytes: int = 0


class PlatformEventRecorder:
    def __init__(self, metrics: OperatorMetrics, writer: str, flush_interval: float, max_events: int,
                 max_bytes: int, gone_pod_ttl_s: float = GONE_POD_TTL_S):
        self.metrics = metrics
        self.writer = writer
        self.flush_interval = flush_interval
        self.max_events = max_events
        self.max_bytes = max_bytes
        # (store, namespace, cluster) -> uid -> the latest version not stored yet
        self._pending: dict[tuple[Store, str, str], dict[str, PlatformEventRecord]] = {}
        self._kept: OrderedDict[tuple[int, SessionRef], KeptSession] = OrderedDict()
        self._pods: OrderedDict[tuple[str, str], str] = OrderedDict()  # (namespace, pod) -> its cluster label
        self._gone_pods: cachetools.TTLCache[tuple[str, str], bool] = cachetools.TTLCache(MAX_POD_CACHE,
                                                                                         gone_pod_ttl_s)
        self._indexes: dict[int, SessionIndex] = {}
        self._seq = 0
        self._lock = asyncio.Lock()

    # -- intake (the Kopf handler) --

    async def pod_cluster(self, kube: Kube, namespace: str, pod: str) -> str:
        """The `ray.io/cluster` label of a pod ("" if it has none or is gone), cached."""
        key = (namespace, pod)
        if key in self._pods:
            self._pods.move_to_end(key)
            return self._pods[key]
        if key in self._gone_pods:
            return ""
        obj = await kube.get(object_path("v1", "Pod", namespace, pod))
        if obj is None:  # gone before its first event: not kept for good, it may come back under the name
            self._gone_pods[key] = True
            return ""
        label = (obj.get("metadata", {}).get("labels") or {}).get(CLUSTER_LABEL, "")
        self._pods[key] = label
        if len(self._pods) > MAX_POD_CACHE:
            self._pods.popitem(last=False)
        return label

    async def offer(self, kube: Kube, event: dict[str, Any], injected: list[InjectedCluster],
                    store_of: Any) -> int:
        """Keep one watched Event for every injected cluster it concerns; how many clusters it was kept for.
        `store_of(cluster)` gives the cluster's history store (None: its RayHistory is gone)."""
        found = involved_object(event)
        if found is None:
            return 0
        kind, name, namespace = found
        pod_label = None
        if kind == "Pod":
            if not may_be_pod_of(name, namespace, injected):
                return 0
            pod_label = await self.pod_cluster(kube, namespace, name)
        kept = 0
        for cluster in clusters_for(kind, name, namespace, injected, pod_label):
            store = store_of(cluster)
            if store is None:
                continue
            try:
                record = record_from_event(event, cluster.name)
            except layout.LayoutError as exc:
                self.metrics.platform_events.labels("invalid").inc()
                log.info("kubernetes event not kept", extra={"cluster": cluster.name, "error": str(exc)})
                return kept
            kept += self.add(store, namespace, cluster.name, [record])
        return kept

    def add(self, store: Store, namespace: str, cluster: str, records: list[PlatformEventRecord]) -> int:
        """Queue records of one cluster for the next flush (the latest version of each); how many were queued."""
        pending = self._pending.setdefault((store, namespace, cluster), {})
        queued = 0
        for record in records:
            known = pending.get(record.uid)
            if known is not None and record.version <= known.version:
                queued += 1  # already queued
                continue
            if known is None and len(pending) >= self.max_events:
                self.metrics.platform_events.labels("dropped").inc()
                continue
            pending[record.uid] = record
            queued += 1
        return queued

    # -- flushing --

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - storage hiccup: what is pending stays pending
                log.exception("flushing kubernetes events failed")

    async def flush(self, store: Store | None = None, namespace: str | None = None, cluster: str | None = None) -> int:
        """Write what is pending (of one cluster, or of all); records whose cluster has no session yet stay.
        Returns how many records were written."""
        async with self._lock:
            written = 0
            for key in list(self._pending):
                if store is not None and key != (store, namespace, cluster):
                    continue
                if store is not None:  # the one asked for: its caller sees what went wrong
                    written += await self._flush_cluster(*key)
                    continue
                try:  # one cluster's broken storage must not keep the others' events from theirs
                    written += await self._flush_cluster(*key)
                except Exception as exc:  # noqa: BLE001 - kept pending, retried on the next flush
                    log.warning("Kubernetes events not written; kept for the next flush",
                                extra={"namespace": key[1], "cluster": key[2], "error": repr(exc)})
            return written

    def forget(self, store: Store, namespace: str, cluster: str) -> int:
        """Drop what is still pending of a deleted cluster that never had a session; how many."""
        dropped = len(self._pending.pop((store, namespace, cluster), {}))
        if dropped:
            self.metrics.platform_events.labels("dropped").inc(dropped)
        return dropped

    async def _flush_cluster(self, store: Store, namespace: str, cluster: str) -> int:
        pending = self._pending.get((store, namespace, cluster)) or {}
        if not pending:
            self._pending.pop((store, namespace, cluster), None)
            return 0
        index = self._indexes.setdefault(id(store), SessionIndex(store, self.writer))
        sessions = await index.sessions(namespace, cluster)
        by_session: dict[SessionRef, list[PlatformEventRecord]] = {}
        for record in pending.values():
            session = session_for(sessions, record.time_ns // 1_000_000)
            if session is not None:
                by_session.setdefault(session.ref, []).append(record)
        written = 0
        for ref, records in by_session.items():
            written += await self._write(store, ref, records)
            for r in records:
                if pending.get(r.uid) is r:
                    del pending[r.uid]
        if not pending:
            self._pending.pop((store, namespace, cluster), None)
        return written

    async def _kept_of(self, store: Store, ref: SessionRef) -> KeptSession:
        key = (id(store), ref)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept
        kept = KeptSession()
        infos = [i for i in await store.list(layout.platform_events_prefix(ref))
                 if layout.is_platform_events_batch_key(ref, i.key)]
        for info_key, data in (await store.get_many([i.key for i in infos])).items():
            if isinstance(data, Exception):
                raise data  # read again next time: a budget counted short could overrun
            kept.stored_bytes += len(data)
            try:
                records = decode_batch(data, 16 * self.max_bytes)
            except (ValueError, OSError) as exc:
                log.warning("unreadable stored kubernetes events", extra={"key": info_key, "error": str(exc)})
                continue
            for r in records:
                if r.uid not in kept.versions or r.version > kept.versions[r.uid]:
                    kept.versions[r.uid] = r.version
        self._kept[key] = kept
        if len(self._kept) > MAX_SESSIONS_TRACKED:
            self._kept.popitem(last=False)
        return kept

    async def _write(self, store: Store, ref: SessionRef, records: list[PlatformEventRecord]) -> int:
        kept = await self._kept_of(store, ref)
        chosen, dropped = fit_budget(records, kept.versions, self.max_events)
        data = encode_batch(chosen) if chosen else b""
        while chosen and kept.stored_bytes + len(data) > self.max_bytes:
            dropped += len(chosen) - len(chosen) // 2
            chosen = chosen[:len(chosen) // 2]
            data = encode_batch(chosen) if chosen else b""
        if dropped:
            self.metrics.platform_events.labels("dropped").inc(dropped)
            log.warning("kubernetes events over the session's bounds, dropped",
                        extra={"session": ref.tail, "dropped": dropped})
        if not chosen:
            return 0
        self._seq += 1
        await store.put(layout.platform_events_batch_key(ref, self.writer, self._seq), data)
        kept.stored_bytes += len(data)
        for r in chosen:
            kept.versions[r.uid] = r.version
        self.metrics.platform_events.labels("kept").inc(len(chosen))
        return len(chosen)

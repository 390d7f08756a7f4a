"""The Kopf handlers: thin adapters from Kopf's calls to the modules that do the work."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any

import kopf

from rayhistory import layout
from rayhistory.store import Store

from . import config, finalizer, injection, platform_events, reconcile, retention
from .config import Settings
from .internal_token import load_operator_token
from .history import HistorySpec, parse_spec, server_service_url
from .kube import Kube, object_path
from .metrics import OperatorMetrics
from .prewarm import prewarm

log = logging.getLogger(__name__)

HISTORY = (config.GROUP, config.VERSION, config.HISTORY_PLURAL)
RAYCLUSTER = (config.RAY_GROUP, config.RAY_VERSION, config.RAYCLUSTER_PLURAL)
MAX_REPORTED_REMOVALS = 20


class Handlers:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._kube: Kube | None = None
        self._stores: dict[tuple[str, str], Store] = {}
        self.metrics = OperatorMetrics()
        self._metrics_runner = None
        self._token: str = ""
        self.platform_events = platform_events.PlatformEventRecorder(
            self.metrics, layout.new_writer_id(), settings.platform_events_flush_interval,
            settings.platform_events_max_per_session, settings.platform_events_max_bytes)
        self._flusher = None

    @property
    def kube(self) -> Kube:
        if self._kube is None:  # after Kopf's login, in the operator's loop
            self._kube = Kube()
        return self._kube

    def store(self, spec: HistorySpec) -> Store:
        key = (spec.storage.url, json.dumps(spec.storage.options, sort_keys=True))
        if key not in self._stores:
            self._stores[key] = Store(spec.storage.url, spec.storage.options, timeout_s=self.settings.storage_timeout_s)
        return self._stores[key]

    async def internal_token(self) -> str:
        if not self._token:  # after Kopf's login; concurrent first calls read the same Secret
            self._token = await load_operator_token(self.kube, self.settings)
        return self._token

    def prewarm_url(self, history_name: str, namespace: str) -> str:
        return self.settings.prewarm_url or server_service_url(history_name, namespace, config.SERVER_INTERNAL_PORT)

    # ---- RayHistory -----------------------------------------------------------------------------

    def index_histories(self, body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[str, Any]:
        return {f"{namespace}/{name}": dict(body)}

    async def reconcile(self, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        try:
            history_spec = parse_spec(dict(spec))
        except ValueError as exc:
            self.metrics.reconciles.labels("invalid").inc()
            patch.status["conditions"] = [reconcile.ready_condition(False, "InvalidSpec", str(exc)[:1000])]
            raise kopf.PermanentError(f"invalid RayHistory spec: {exc}") from exc
        status = await reconcile.reconcile(self.kube, dict(body), history_spec, await self.internal_token())
        self.metrics.reconciles.labels("ok").inc()
        patch.status.update(status)

    async def remove_history(self, body: kopf.Body, **_: Any) -> None:
        await reconcile.remove_cluster_objects(self.kube, dict(body))

    async def apply_retention(self, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        history_spec = parse_spec(dict(spec))
        run = await retention.apply_retention(
            self.store(history_spec), history_spec.retention, layout.now_ms(),
            int(self.settings.superseded_grace * 1000),
        )
        self.metrics.retention_sessions_removed.inc(len(run.deleted))
        self.metrics.retention_objects_removed.inc(run.deleted_objects)
        patch.status["sessionsRecorded"] = run.sessions_recorded
        patch.status["retention"] = {
            "lastRun": reconcile.now_rfc3339(),
            "lastClosed": run.closed[:MAX_REPORTED_REMOVALS],
            "lastRemoved": run.deleted[:MAX_REPORTED_REMOVALS],
            "lastRemovedCount": len(run.deleted),
            "lastRemovedObjects": run.deleted_objects,
        }
        if run.deleted or run.closed:
            kopf.info(body, reason="Retention", message=(
                f"removed {len(run.deleted)} session(s) ({run.deleted_objects} objects): "
                f"{', '.join(run.deleted[:MAX_REPORTED_REMOVALS])}; closed {len(run.closed)} superseded session(s)"))

    # ---- RayCluster -----------------------------------------------------------------------------

    async def inject(self, body: kopf.Body, patch: kopf.Patch, warnings: list[str], histories: kopf.Index,
                     operation: str | None = None, **_: Any) -> None:
        try:
            self._inject(dict(body), patch, warnings, histories, operation)
        except Exception as exc:  # noqa: BLE001 - whatever the input, the RayCluster is admitted unchanged
            patch.clear()
            self.metrics.admissions.labels("skipped").inc()
            warnings.append(f"rayhistory: collector not injected ({type(exc).__name__})")
            log.warning("injection failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    def _inject(self, body: dict[str, Any], patch: kopf.Patch, warnings: list[str], histories: kopf.Index,
                operation: str | None) -> None:
        meta = body.get("metadata") or {}
        watched = self.settings.watched_namespaces()
        if watched and meta.get("namespace") not in watched:
            return  # its deletion would never be seen, so its finalizer would never be released
        known = [value for key in histories for value in histories[key]]
        if operation == "UPDATE":
            changes, note = injection.update_patch(body, known)
            if changes is not None:
                self.metrics.admissions.labels("reinjected").inc()
                patch.spec.update(changes["spec"])
            elif note.startswith("rayhistory:"):
                warnings.append(note)
            return
        changes, note = injection.admission_patch(body, known)
        if changes is None:
            if note.startswith("rayhistory:"):
                self.metrics.admissions.labels("skipped").inc()
                warnings.append(note)
                log.warning("injection skipped", extra={"cluster": meta.get("name"), "why": note})
            else:
                self.metrics.admissions.labels("unchanged").inc()
            return
        self.metrics.admissions.labels("injected").inc()
        patch.metadata.setdefault("annotations", {}).update(changes["metadata"]["annotations"])
        patch.metadata["finalizers"] = changes["metadata"]["finalizers"]
        patch.spec.update(changes["spec"])

    async def record_on_delete(self, body: kopf.Body, meta: kopf.Meta, namespace: str, name: str, retry: int,
                               histories: kopf.Index, **_: Any) -> None:
        ref = meta.get("annotations", {}).get(config.HISTORY_ANNOTATION, "")
        found = list(histories.get(ref, []))
        if not found:
            kopf.warn(body, reason="NotRecorded", message=f"RayHistory {ref} is gone: sessions not marked dead")
            return
        history = found[0]
        history_spec = parse_spec(history.get("spec") or {})
        if retry == 0:
            # The collectors flush when their pods stop; KubeRay does not stop them while we hold the cluster.
            deleted = await self.kube.delete_collection(object_path("v1", "Pod", namespace), f"ray.io/cluster={name}")
            if self.settings.platform_events:  # their containers' last terminations (OOMKilled), from the answer
                for pod in deleted.get("items") or []:
                    self.platform_events.add(self.store(history_spec), namespace, name,
                                             platform_events.container_terminations(pod, name))
        now = datetime.datetime.now(datetime.timezone.utc)
        reached = finalizer.deadline_passed(meta.get("deletionTimestamp"), self.settings.finalizer_deadline, now)
        try:
            deleted_at = meta.get("deletionTimestamp")
            end_ms = int(finalizer.parse_timestamp(deleted_at).timestamp() * 1000) if deleted_at else None
            recorded = await finalizer.record_cluster(self.store(history_spec), namespace, name, reached, end_ms)
        except finalizer.FlushPending as exc:
            self.metrics.flush_waits.inc()
            raise kopf.TemporaryError(str(exc), delay=self.settings.finalizer_poll_interval) from exc
        if self.settings.platform_events:
            await self.keep_last_events(self.store(history_spec), namespace, name)
        self.metrics.clusters_recorded.labels("flushed" if recorded.flushed else "deadline").inc()
        self.metrics.sessions_marked_dead.inc(len(recorded.marked))
        hmeta = history["metadata"]
        results = await prewarm(self.prewarm_url(hmeta["name"], hmeta["namespace"]), await self.internal_token(),
                                [s.ref for s in recorded.marked], self.settings.prewarm_timeout)
        for status in results.values():
            self.metrics.prewarms.labels("ok" if status in (200, 202) else "failed").inc()
        # An event, not a return value: Kopf would store a result in the status, which belongs to KubeRay.
        kopf.info(body, reason="Recorded", message=(
            f"{len(recorded.marked)} session(s) marked dead in {hmeta['namespace']}/{hmeta['name']} "
            f"({recorded.reason}); pre-warm: {results}"))

    # ---- Kubernetes Events of injected clusters (platform_events.py) -------------------------------

    async def keep_last_events(self, store: Store, namespace: str, name: str) -> None:
        """The deleted cluster's events up to its release, into its sessions; what has no session is dropped.
        Never holds the deletion: the events are only what the sessions were already missing."""
        try:
            await self.platform_events.flush(store, namespace, name)
        except Exception:  # noqa: BLE001 - storage hiccup: the periodic flush tries again while they are pending
            log.exception("kubernetes events of a deleted cluster not written", extra={"cluster": name})
            return
        self.platform_events.forget(store, namespace, name)

    def index_injected(self, namespace: str, name: str, meta: kopf.Meta, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): platform_events.injected_cluster(namespace, name, dict(meta),
                                                                   config.HISTORY_ANNOTATION)}

    async def keep_event(self, body: kopf.Body, type: str | None, injected: kopf.Index, histories: kopf.Index,
                         **_: Any) -> None:
        if type == "DELETED":  # an Event expiring in the API: what was kept stays kept
            return
        clusters = [c for key in injected for c in injected[key]]
        if not clusters:
            return

        def store_of(cluster: platform_events.InjectedCluster) -> Store | None:
            found = list(histories.get(cluster.history, []))
            return self.store(parse_spec(found[0].get("spec") or {})) if found else None
        await self.platform_events.offer(self.kube, dict(body), clusters, store_of)

    # ---- the metrics endpoint, in the operator's loop -------------------------------------------

    async def start_metrics(self, **_: Any) -> None:
        if self.settings.metrics_port:
            self._metrics_runner = await self.metrics.serve("0.0.0.0", self.settings.metrics_port)
        if self.settings.platform_events:
            self._flusher = asyncio.create_task(self.platform_events.run(), name="kubernetes events flusher")

    async def stop_metrics(self, **_: Any) -> None:
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            try:
                await self.platform_events.flush()  # what is pending is written before the operator stops
            except Exception:  # noqa: BLE001 - storage down at shutdown: the events are still in the API
                log.exception("last flush of kubernetes events failed")

    # ---- registration ---------------------------------------------------------------------------

    def register(self, registry: kopf.OperatorRegistry) -> None:
        s = self.settings
        kopf.on.startup(id="metrics", registry=registry)(self.start_metrics)
        kopf.on.cleanup(id="metrics", registry=registry)(self.stop_metrics)
        kopf.index(*HISTORY, id="histories", registry=registry)(self.index_histories)
        kopf.on.create(*HISTORY, id="reconcile", registry=registry)(self.reconcile)
        kopf.on.update(*HISTORY, id="reconcile", field="spec", registry=registry)(self.reconcile)
        kopf.on.resume(*HISTORY, id="reconcile", registry=registry)(self.reconcile)
        kopf.on.delete(*HISTORY, id="cleanup", registry=registry)(self.remove_history)
        kopf.timer(*HISTORY, id="retention", interval=s.retention_interval, registry=registry)(self.apply_retention)
        kopf.on.mutate(*RAYCLUSTER, id="inject", operations=["CREATE", "UPDATE"], ignore_failures=True,
                       registry=registry)(self.inject)
        kopf.on.delete(*RAYCLUSTER, id="record", annotations={config.HISTORY_ANNOTATION: kopf.PRESENT},
                       registry=registry)(self.record_on_delete)
        if s.platform_events:
            kopf.index(*RAYCLUSTER, id="injected", annotations={config.HISTORY_ANNOTATION: kopf.PRESENT},
                       registry=registry)(self.index_injected)
            kopf.on.event("v1", "events", id="platform_events", registry=registry)(self.keep_event)

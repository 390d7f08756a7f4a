"""The operator's Prometheus metrics, served on their own port by an aiohttp app in Kopf's event loop
(the way Kopf serves its liveness probe), with a registry of its own so tests can run several operators."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.reconciles = Counter("rayhistory_operator_reconciles", "RayHistory reconciles, by result",
                                  ["result"], registry=r)
        self.admissions = Counter("rayhistory_operator_admissions", "RayCluster admissions, by result "
                                  "(injected, unchanged, skipped with a warning; reinjected on an update)", ["result"], registry=r)
        self.flush_waits = Counter("rayhistory_operator_flush_waits",
                                   "finalizer checks that found a collector's final flush still pending", registry=r)
        self.clusters_recorded = Counter("rayhistory_operator_clusters_recorded",
                                         "deleted RayClusters recorded, by how (flushed or deadline)",
                                         ["reason"], registry=r)
        self.sessions_marked_dead = Counter("rayhistory_operator_sessions_marked_dead",
                                            "sessions marked dead on RayCluster deletion", registry=r)
        self.prewarms = Counter("rayhistory_operator_prewarms", "pre-warm calls, by result", ["result"], registry=r)
        self.retention_sessions_removed = Counter("rayhistory_operator_retention_sessions_removed",
                                                  "sessions deleted by retention", registry=r)
        self.retention_objects_removed = Counter("rayhistory_operator_retention_objects_removed",
                                                 "storage objects deleted by retention", registry=r)
        self.platform_events = Counter("rayhistory_operator_platform_events", "Kubernetes Events of injected "
                                       "clusters, by result (kept in storage, dropped over a bound, invalid)",
                                       ["result"], registry=r)

    async def serve(self, host: str, port: int) -> web.AppRunner:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

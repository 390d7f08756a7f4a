"""Pure builders of every Kubernetes object the operator writes, and of the collector injection.

Nothing here does I/O: each function takes the RayHistory (or RayCluster) and returns plain dicts, so the
whole shape of what the operator creates is unit-tested without an API server.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import config
from .history import HistorySpec, server_name

Obj = dict[str, Any]

# Event export over HTTP in Ray 2.60 (see DESIGN.md): the aggregator agent posts to the collector.
RAY_EVENT_ENV = {
    "RAY_enable_ray_event": "true",
    "RAY_enable_core_worker_ray_event_to_aggregator": "true",
    "RAY_DASHBOARD_AGGREGATOR_AGENT_EVENTS_EXPORT_ADDR": f"http://127.0.0.1:{config.COLLECTOR_PORT}/v1/events",
    # The default list leaves out TASK_PROFILE_EVENT, which the timeline needs.
    "RAY_DASHBOARD_AGGREGATOR_AGENT_EXPOSABLE_EVENT_TYPES": "ALL",
}
OWNER_KINDS = ("RayJob", "RayService")
# Extra seconds of pod grace on top of the collector's own shutdown grace (its final upload).
FLUSH_GRACE_MARGIN = 10


# What the server's ServiceAccount needs for --auth kubernetes, and nothing more: a TokenReview per caller's
# token, a SubjectAccessReview per (caller, namespace). Both are create-only, cluster-scoped, and read nothing.
SERVER_AUTH_RULES: list[Obj] = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]
# The whole rayhistory-server ClusterRole (deploy/operator/rbac.yaml holds the same; a test keeps them equal):
# live sessions' RayClusters and head Services, and the reviews above.
SERVER_CLUSTER_ROLE_RULES: list[Obj] = [
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
    *SERVER_AUTH_RULES,
]


def server_auth_rules() -> list[Obj]:
    return copy.deepcopy(SERVER_AUTH_RULES)


class InjectionError(ValueError):
    """The RayCluster does not have the shape injection needs; it is admitted unchanged."""


def labels(history_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "rayhistory-server",
        "app.kubernetes.io/instance": history_name,
        "app.kubernetes.io/managed-by": "rayhistory-operator",
    }


def owner_reference(owner: Obj) -> Obj:
    """Makes the owner's deletion delete the object (Kubernetes garbage collection)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, history: Obj) -> Obj:
    return {
        "name": name, "namespace": namespace, "labels": labels(history["metadata"]["name"]),
        "ownerReferences": [owner_reference(history)],
    }


def _storage_env(spec: HistorySpec) -> list[Obj]:
    return [
        {"name": "RAYHISTORY_STORAGE", "value": spec.storage.url},
        {"name": "RAYHISTORY_STORAGE_OPTIONS", "value": json.dumps(spec.storage.options, sort_keys=True)},
    ]


def _env_from(spec: HistorySpec) -> list[Obj]:
    if not spec.storage.credentials_secret:
        return []
    return [{"secretRef": {"name": spec.storage.credentials_secret, "optional": True}}]


# ---- the history server ------------------------------------------------------------------------

def build_service_account_spec(history: Obj) -> Obj:
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(server_name(name), namespace, history)}


def cluster_role_binding_name(history: Obj) -> str:
    return f"rayhistory-server-{history['metadata']['namespace']}-{history['metadata']['name']}"


def build_cluster_role_binding_spec(history: Obj) -> Obj:
    """Lets the server read RayClusters and Services everywhere (live-session proxy targets).

    Cluster-scoped, so it cannot be owned by the namespaced RayHistory: the operator deletes it when
    the RayHistory goes.
    """
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": cluster_role_binding_name(history), "labels": labels(name)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": config.SERVER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": server_name(name), "namespace": namespace}],
    }


def internal_token_secret_name(history: Obj) -> str:
    return f"{server_name(history['metadata']['name'])}-internal-token"


def build_internal_token_secret_spec(history: Obj, token: str) -> Obj:
    """The server's copy of the operator's internal-port token, owned by (and deleted with) its RayHistory."""
    meta = history["metadata"]
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": internal_token_secret_name(history), "namespace": meta["namespace"],
                     "labels": labels(meta["name"]), "ownerReferences": [owner_reference(history)]},
        "stringData": {config.INTERNAL_TOKEN_KEY: token},
    }


def build_server_deployment_spec(history: Obj, spec: HistorySpec) -> Obj:
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    server = spec.server
    env = _storage_env(spec)
    # Never optional: a server without its token refuses to start rather than open its internal port.
    token_ref = ({"name": server.prewarm_token_secret.name, "key": server.prewarm_token_secret.key}
                 if server.prewarm_token_secret else
                 {"name": internal_token_secret_name(history), "key": config.INTERNAL_TOKEN_KEY})
    env.append({"name": "RAYHISTORY_PREWARM_TOKEN", "valueFrom": {"secretKeyRef": token_ref}})
    if server.ray_token_secret:  # Ray's own token auth: what the live proxy sends to token-mode heads
        env.append({"name": "RAYHISTORY_RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": server.ray_token_secret.name, "key": server.ray_token_secret.key}}})
    container = {
        "name": "server",
        "image": server.image,
        "imagePullPolicy": server.image_pull_policy,
        "args": [
            "server",
            "--port", str(config.SERVER_PORT),
            "--internal-port", str(config.SERVER_INTERNAL_PORT),
            "--cache-max-sessions", str(server.cache_max_sessions),
            "--cache-max-bytes", str(server.cache_max_bytes),
            "--tasks-on-disk-above-bytes", str(server.tasks_on_disk_above_bytes),
            "--load-timeout", str(server.load_timeout),
            "--live-sessions", server.live_sessions,
            "--live-reload-s", str(server.live_reload_seconds),
            *_auth_args(server.auth),
        ],
        "env": env,
        "envFrom": _env_from(spec),
        "ports": [
            {"name": "http", "containerPort": config.SERVER_PORT},
            {"name": "internal", "containerPort": config.SERVER_INTERNAL_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "internal"}, "periodSeconds": 20, "failureThreshold": 6},
        "resources": copy.deepcopy(server.resources),
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    selector = {"app.kubernetes.io/name": "rayhistory-server", "app.kubernetes.io/instance": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(server_name(name), namespace, history),
        "spec": {
            "replicas": server.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "serviceAccountName": server_name(name),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _auth_args(auth) -> list[str]:
    if auth.mode == "off":
        return ["--auth", "off"]
    args = ["--auth", "kubernetes", "--auth-verb", auth.verb, "--auth-group", auth.group,
            "--auth-resource", auth.resource, "--auth-cache-ttl-s", str(auth.cache_ttl_seconds)]
    if auth.trusted_proxies:
        args += ["--auth-trusted-proxies", json.dumps(auth.trusted_proxies), "--auth-proxy-identity", auth.proxy_identity]
    return args


def build_server_service_spec(history: Obj) -> Obj:
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(server_name(name), namespace, history),
        "spec": {
            "selector": {"app.kubernetes.io/name": "rayhistory-server", "app.kubernetes.io/instance": name},
            "ports": [
                {"name": "http", "port": config.SERVER_PORT, "targetPort": "http"},
                # Pre-warm and metrics: reachable inside the cluster only, never routed by the Ingress.
                {"name": "internal", "port": config.SERVER_INTERNAL_PORT, "targetPort": "internal"},
            ],
        },
    }


def build_server_ingress_spec(history: Obj, spec: HistorySpec) -> Obj | None:
    """The Ingress routes to the public port only; None when the RayHistory asks for none."""
    ingress = spec.ingress
    if not ingress.enabled:
        return None
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    meta = _meta(server_name(name), namespace, history)
    if ingress.annotations:
        meta["annotations"] = dict(ingress.annotations)
    rule: Obj = {
        "http": {"paths": [{
            "path": ingress.path, "pathType": "Prefix",
            "backend": {"service": {"name": server_name(name), "port": {"name": "http"}}},
        }]},
    }
    if ingress.host:
        rule["host"] = ingress.host
    body: Obj = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": {"rules": [rule]}}
    if ingress.class_name:
        body["spec"]["ingressClassName"] = ingress.class_name
    if ingress.tls:
        body["spec"]["tls"] = [t.model_dump(by_alias=True, exclude_defaults=True) for t in ingress.tls]
    return body


def server_url(history: Obj, spec: HistorySpec) -> str:
    """Where users open the history: the Ingress when there is one, else the in-cluster Service."""
    ingress = spec.ingress
    if ingress.enabled and ingress.host:
        scheme = "https" if any(ingress.host in t.hosts for t in ingress.tls) else "http"
        return f"{scheme}://{ingress.host}{ingress.path}"
    name, namespace = history["metadata"]["name"], history["metadata"]["namespace"]
    return f"http://{server_name(name)}.{namespace}.svc:{config.SERVER_PORT}/"


# ---- collector injection into RayClusters --------------------------------------------------------

def history_ref(history: Obj) -> str:
    return f"{history['metadata']['namespace']}/{history['metadata']['name']}"


def wants_injection(cluster: Obj, spec: HistorySpec) -> bool:
    """Whether this RayHistory injects into this RayCluster (selectors and the opt-out annotation)."""
    meta = cluster.get("metadata") or {}
    if not spec.injection.enabled:
        return False
    # The annotation is the documented opt-out; the label does the same and also spares the webhook call.
    if any(str((meta.get(where) or {}).get(config.INJECT_ANNOTATION, "")).lower() == "false"
           for where in ("annotations", "labels")):
        return False
    if spec.injection.namespaces and meta.get("namespace") not in spec.injection.namespaces:
        return False
    return spec.injection.cluster_selector.matches(meta.get("labels") or {})


def choose_history(cluster: Obj, histories: list[tuple[Obj, HistorySpec]]) -> tuple[Obj, HistorySpec] | None:
    """The first RayHistory (by namespace/name) that wants this cluster; one cluster, one history."""
    for history, spec in sorted(histories, key=lambda h: history_ref(h[0])):
        if wants_injection(cluster, spec):
            return history, spec
    return None


def cluster_owner(cluster: Obj) -> tuple[str, str]:
    """(kind, name) of the RayJob or RayService that owns the cluster, or ('', '')."""
    meta = cluster.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") in OWNER_KINDS:
            return ref["kind"], ref.get("name", "")
    labels_ = meta.get("labels") or {}
    kind = labels_.get("ray.io/originated-from-crd", "")
    if kind in OWNER_KINDS:
        return kind, labels_.get("ray.io/originated-from-cr-name", "")
    return "", ""


def build_collector_container(
    spec: HistorySpec, cluster_name: str, namespace: str, owner: tuple[str, str], is_head: bool, volume: str,
) -> Obj:
    collector = spec.collector
    env = _storage_env(spec) + [
        {"name": "RAYHISTORY_PORT", "value": str(config.COLLECTOR_PORT)},
        {"name": "RAYHISTORY_METRICS_PORT", "value": str(config.COLLECTOR_METRICS_PORT)},
        {"name": "RAYHISTORY_CLUSTER_NAME", "value": cluster_name},
        {"name": "RAYHISTORY_NAMESPACE", "value": namespace},
        {"name": "RAYHISTORY_OWNER_KIND", "value": owner[0]},
        {"name": "RAYHISTORY_OWNER_NAME", "value": owner[1]},
        {"name": "RAYHISTORY_RAY_TEMP_ROOT", "value": config.RAY_TEMP_ROOT},
        {"name": "RAYHISTORY_SPOOL_DIR", "value": config.SPOOL_DIR},
        {"name": "RAYHISTORY_FLUSH_INTERVAL", "value": str(collector.flush_interval)},
        {"name": "RAYHISTORY_LOG_UPLOAD_INTERVAL", "value": str(collector.log_upload_interval)},
        {"name": "RAYHISTORY_SHUTDOWN_GRACE", "value": str(collector.shutdown_grace)},
    ]
    if is_head:
        env.append({"name": "RAYHISTORY_DASHBOARD_URL", "value": config.RAY_DASHBOARD_URL})
    container: Obj = {
        "name": config.COLLECTOR_CONTAINER,
        "image": collector.image,
        "imagePullPolicy": collector.image_pull_policy,
        "args": ["collector"],
        "env": env,
        # ingest listens on the pod's loopback (Ray's agent posts from the same pod): only metrics are a port
        "ports": [{"name": "rh-metrics", "containerPort": config.COLLECTOR_METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": config.COLLECTOR_METRICS_PORT}, "periodSeconds": 10},
        "resources": copy.deepcopy(collector.resources),
        "volumeMounts": [
            {"name": volume, "mountPath": config.RAY_TEMP_ROOT},
            {"name": config.SPOOL_VOLUME, "mountPath": config.SPOOL_DIR},
        ],
    }
    if spec.storage.credentials_secret:
        container["envFrom"] = _env_from(spec)
    return container


RAY_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_auth_token_of(ray: Obj) -> tuple[list[Obj], list[Obj]]:
    """Ray's token auth as the Ray container has it (RAY_AUTH_MODE=token; the token from RAY_AUTH_TOKEN, often a
    secretKeyRef, or a file at RAY_AUTH_TOKEN_PATH on a mounted Secret): the same env entries for the collector,
    and read-only copies of the mounts holding that file. (KubeRay 1.5 sets none of these itself.)"""
    env = [copy.deepcopy(e) for e in ray.get("env") or [] if isinstance(e, dict) and e.get("name") in RAY_AUTH_ENV]
    path = next((e.get("value") for e in env if e.get("name") == "RAY_AUTH_TOKEN_PATH"), None)
    mounts = []
    if isinstance(path, str) and path:
        for m in ray.get("volumeMounts") or []:
            root = str(m.get("mountPath", "")).rstrip("/")
            if isinstance(m, dict) and root and (path == root or path.startswith(root + "/")):
                mounts.append({k: v for k, v in m.items() if k in ("name", "mountPath", "subPath")} | {"readOnly": True})
    return env, mounts


def _inject_pod_template(
    template: Any, spec: HistorySpec, cluster_name: str, namespace: str, owner: tuple[str, str], is_head: bool,
    where: str,
) -> Obj:
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise InjectionError(f"{where}.template.spec is missing or not an object")
    pod = copy.deepcopy(template)
    pod_spec = pod["spec"]
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise InjectionError(f"{where}.template.spec.containers must be a non-empty list of objects")
    if any(c.get("name") == config.COLLECTOR_CONTAINER for c in containers):
        return pod  # injected before: applying twice changes nothing
    ray = containers[0]  # KubeRay's convention: the first container runs Ray
    volumes = pod_spec.setdefault("volumes", [])
    mounts = ray.setdefault("volumeMounts", [])
    if not isinstance(volumes, list) or not isinstance(mounts, list):
        raise InjectionError(f"{where}: volumes and volumeMounts must be lists")
    # Reuse the volume the Ray container already has at /tmp/ray, else share a new emptyDir.
    volume = next((m.get("name") for m in mounts if m.get("mountPath", "").rstrip("/") == config.RAY_TEMP_ROOT), None)
    if volume is None:
        # An emptyDir of ours (or KubeRay's) that lost its mount is reused: `kubectl apply` of the user's
        # manifest replaces the containers (and their mounts) but keeps the volumes we added.
        by_name = {v.get("name"): v for v in volumes if isinstance(v, dict)}
        volume = next(n for n in (config.RAY_TEMP_VOLUME, config.RAY_TEMP_VOLUME_FALLBACK)
                      if n not in by_name or set(by_name[n]) == {"name", "emptyDir"})
        if volume not in by_name:
            volumes.append({"name": volume, "emptyDir": {}})
        mounts.append({"name": volume, "mountPath": config.RAY_TEMP_ROOT})
    if not any(isinstance(v, dict) and v.get("name") == config.SPOOL_VOLUME for v in volumes):
        volumes.append({"name": config.SPOOL_VOLUME, "emptyDir": {}})
    env = ray.setdefault("env", [])
    if not isinstance(env, list):
        raise InjectionError(f"{where}: the Ray container's env must be a list")
    present = {e.get("name") for e in env if isinstance(e, dict)}
    env.extend({"name": k, "value": v} for k, v in RAY_EVENT_ENV.items() if k not in present)  # user's value wins
    collector = build_collector_container(spec, cluster_name, namespace, owner, is_head, volume)
    if is_head:  # Ray's token auth: the head poller needs the token the Ray container has
        token_env, token_mounts = ray_auth_token_of(ray)
        collector["env"].extend(token_env)
        collector["volumeMounts"].extend(token_mounts)
    containers.append(collector)
    grace = spec.collector.shutdown_grace + FLUSH_GRACE_MARGIN
    pod_spec["terminationGracePeriodSeconds"] = max(int(pod_spec.get("terminationGracePeriodSeconds") or 30), grace)
    return pod


def inject_raycluster(cluster: Obj, history: Obj, spec: HistorySpec) -> Obj:
    """The changes that inject the collector into a RayCluster, as a merge patch.

    Head group and every worker group get the collector, the shared /tmp/ray volume and the Ray env
    vars; the cluster gets the history annotation and the recording finalizer. Raises InjectionError
    when the cluster's shape is not what KubeRay defines (the webhook then admits it unchanged).
    """
    meta = cluster.get("metadata")
    body = cluster.get("spec")
    if not isinstance(meta, dict) or not isinstance(body, dict):
        raise InjectionError("metadata and spec must be objects")
    name = meta.get("name") or ""
    namespace = meta.get("namespace") or ""
    if not name:
        raise InjectionError("the RayCluster has no name (generateName is not supported)")
    owner = cluster_owner(cluster)
    head = body.get("headGroupSpec")
    if not isinstance(head, dict):
        raise InjectionError("spec.headGroupSpec is missing or not an object")
    workers = body.get("workerGroupSpecs") or []
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise InjectionError("spec.workerGroupSpecs must be a list of objects")
    new_head = dict(head, template=_inject_pod_template(
        head.get("template"), spec, name, namespace, owner, True, "spec.headGroupSpec"))
    new_workers = [
        dict(w, template=_inject_pod_template(
            w.get("template"), spec, name, namespace, owner, False, f"spec.workerGroupSpecs[{i}]"))
        for i, w in enumerate(workers)
    ]
    finalizers = list(meta.get("finalizers") or [])
    if config.FINALIZER not in finalizers:
        finalizers.append(config.FINALIZER)
    patch: Obj = {
        "metadata": {"annotations": {config.HISTORY_ANNOTATION: history_ref(history)}, "finalizers": finalizers},
        "spec": {"headGroupSpec": new_head},
    }
    if "workerGroupSpecs" in body:
        patch["spec"]["workerGroupSpecs"] = new_workers
    return patch

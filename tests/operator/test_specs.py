"""Pure spec builders and the collector injection, without Kubernetes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from rayhistory.operator import config, specs
from rayhistory.operator.history import HistorySpec, duration_seconds, parse_spec
from rayhistory.operator.injection import admission_patch, update_patch
from tests.kube_api import merge_patch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"


def history(spec: dict | None = None, name: str = "history", namespace: str = "rh") -> dict:
    return {
        "apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": 3},
        "spec": spec or {"storage": {"url": "s3://bucket/prefix", "options": {"endpoint_url": "http://s3:9000"}}},
    }


def example_cluster() -> dict:
    return yaml.safe_load((EXAMPLES / "raycluster.yaml").read_text())


def containers(template: dict) -> dict[str, dict]:
    return {c["name"]: c for c in template["spec"]["containers"]}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_durations():
    assert duration_seconds("90s") == 90
    assert duration_seconds("12h") == 12 * 3600
    assert duration_seconds("30d") == 30 * 86400
    assert duration_seconds("") == 0
    with pytest.raises(ValueError):
        duration_seconds("3 weeks")


def test_server_objects_are_owned_and_route_only_the_public_port():
    h = history({"storage": {"url": "s3://b/p", "credentialsSecret": "creds"},
                 "server": {"replicas": 3, "cacheMaxSessions": 7, "prewarmTokenSecret": {"name": "tok"}},
                 "ingress": {"enabled": True, "host": "rh.example.com", "className": "nginx",
                             "tls": [{"hosts": ["rh.example.com"], "secretName": "tls"}]}})
    spec = parse_spec(h["spec"])
    deployment = specs.build_server_deployment_spec(h, spec)
    service = specs.build_server_service_spec(h)
    ingress = specs.build_server_ingress_spec(h, spec)
    for obj in (deployment, service, ingress, specs.build_service_account_spec(h)):
        assert obj["metadata"]["namespace"] == "rh"
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory", "name": "history", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True}]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
    assert pod["spec"]["serviceAccountName"] == "history-server"
    server = pod["spec"]["containers"][0]
    args = server["args"]
    assert args[0] == "server" and args[args.index("--cache-max-sessions") + 1] == "7"
    assert args[args.index("--internal-port") + 1] == str(config.SERVER_INTERNAL_PORT)
    assert env_of(server)["RAYHISTORY_STORAGE"] == "s3://b/p"
    token = next(e for e in server["env"] if e["name"] == "RAYHISTORY_PREWARM_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "tok", "key": "token"}
    assert server["envFrom"] == [{"secretRef": {"name": "creds", "optional": True}}]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8080, "internal": 8081}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "history-server", "port": {"name": "http"}}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["rh.example.com"], "secretName": "tls"}]
    assert specs.server_url(h, spec) == "https://rh.example.com/"
    binding = specs.build_cluster_role_binding_spec(h)
    assert binding["roleRef"]["name"] == config.SERVER_CLUSTER_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "history-server", "namespace": "rh"}]


def test_no_ingress_unless_asked():
    h = history()
    spec = parse_spec(h["spec"])
    assert specs.build_server_ingress_spec(h, spec) is None
    assert specs.server_url(h, spec) == "http://history-server.rh.svc:8080/"


def test_injection_adds_collector_to_head_and_every_worker_group():
    cluster = example_cluster()
    cluster["metadata"]["ownerReferences"] = [{"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "nightly", "uid": "u"}]
    h = history()
    patch = specs.inject_raycluster(cluster, h, parse_spec(h["spec"]))
    injected = merge_patch(cluster, patch)
    assert injected["metadata"]["annotations"][config.HISTORY_ANNOTATION] == "rh/history"
    assert injected["metadata"]["finalizers"] == [config.FINALIZER]
    groups = [("head", injected["spec"]["headGroupSpec"])] + [("worker", w) for w in injected["spec"]["workerGroupSpecs"]]
    assert len(groups) == 2
    for kind, group in groups:
        pod = group["template"]
        by_name = containers(pod)
        ray = pod["spec"]["containers"][0]
        collector = by_name[config.COLLECTOR_CONTAINER]
        assert {k: env_of(ray)[k] for k in specs.RAY_EVENT_ENV} == specs.RAY_EVENT_ENV
        cenv = env_of(collector)
        assert cenv["RAYHISTORY_STORAGE"] == "s3://bucket/prefix"
        assert json.loads(cenv["RAYHISTORY_STORAGE_OPTIONS"]) == {"endpoint_url": "http://s3:9000"}
        assert (cenv["RAYHISTORY_CLUSTER_NAME"], cenv["RAYHISTORY_NAMESPACE"]) == ("demo", "default")
        assert (cenv["RAYHISTORY_OWNER_KIND"], cenv["RAYHISTORY_OWNER_NAME"]) == ("RayJob", "nightly")
        assert cenv["RAYHISTORY_PORT"] == "8084" and cenv["RAYHISTORY_RAY_TEMP_ROOT"] == "/tmp/ray"
        assert ("RAYHISTORY_DASHBOARD_URL" in cenv) == (kind == "head")
        assert collector["args"] == ["collector"]
        # one volume shared at /tmp/ray
        ray_mount = next(m for m in ray["volumeMounts"] if m["mountPath"] == "/tmp/ray")
        assert collector["volumeMounts"] == [{"name": ray_mount["name"], "mountPath": "/tmp/ray"},
                                             {"name": "rayhistory-spool", "mountPath": cenv["RAYHISTORY_SPOOL_DIR"]}]
        assert {"name": ray_mount["name"], "emptyDir": {}} in pod["spec"]["volumes"]
        assert {"name": "rayhistory-spool", "emptyDir": {}} in pod["spec"]["volumes"]
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 20 + specs.FLUSH_GRACE_MARGIN
    # KubeRay's name for /tmp/ray: its autoscaler sidecar then mounts the same volume
    assert {v["name"] for v in injected["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]} == {
        "ray-logs", "rayhistory-spool"}
    # the user's own containers are untouched apart from the env and the mount
    assert containers(injected["spec"]["headGroupSpec"]["template"])["ray-head"]["image"] == "rayproject/ray:2.60.0"


def test_injection_is_idempotent_and_keeps_user_values():
    cluster = example_cluster()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["env"] = [{"name": "RAY_DASHBOARD_AGGREGATOR_AGENT_EXPOSABLE_EVENT_TYPES", "value": "TASK_DEFINITION_EVENT"}]
    head["containers"][0]["volumeMounts"] = [{"name": "my-tmp", "mountPath": "/tmp/ray/"}]
    head["volumes"] = [{"name": "my-tmp", "emptyDir": {"medium": "Memory"}}]
    head["terminationGracePeriodSeconds"] = 300
    h = history()
    spec = parse_spec(h["spec"])
    once = merge_patch(cluster, specs.inject_raycluster(cluster, h, spec))
    twice = merge_patch(once, specs.inject_raycluster(once, h, spec))
    assert twice == once
    pod = once["spec"]["headGroupSpec"]["template"]["spec"]
    # reused, not duplicated
    assert pod["volumes"] == [{"name": "my-tmp", "emptyDir": {"medium": "Memory"}},
                              {"name": "rayhistory-spool", "emptyDir": {}}]
    assert containers({"spec": pod})[config.COLLECTOR_CONTAINER]["volumeMounts"][0]["name"] == "my-tmp"
    assert env_of(pod["containers"][0])["RAY_DASHBOARD_AGGREGATOR_AGENT_EXPOSABLE_EVENT_TYPES"] == "TASK_DEFINITION_EVENT"
    assert pod["terminationGracePeriodSeconds"] == 300


def test_volume_name_taken_for_something_else():
    cluster = example_cluster()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    head["volumes"] = [{"name": "ray-logs", "configMap": {"name": "x"}}]
    head["containers"][0]["volumeMounts"] = [{"name": "ray-logs", "mountPath": "/etc/ray-logs"}]
    h = history()
    pod = merge_patch(cluster, specs.inject_raycluster(cluster, h, parse_spec(h["spec"])))
    volumes = pod["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["ray-logs", "rayhistory-ray-tmp", "rayhistory-spool"]


def test_selectors_and_opt_out():
    cluster = example_cluster()
    h = history({"storage": {"url": "file:///x"}, "injection": {
        "namespaces": ["default"], "clusterSelector": {"matchLabels": {"team": "ml"}}}})
    spec = parse_spec(h["spec"])
    assert not specs.wants_injection(cluster, spec)
    cluster["metadata"]["labels"] = {"team": "ml"}
    assert specs.wants_injection(cluster, spec)
    other_ns = copy.deepcopy(cluster)
    other_ns["metadata"]["namespace"] = "elsewhere"
    assert not specs.wants_injection(other_ns, spec)
    assert specs.wants_injection(cluster, spec)
    as_label = copy.deepcopy(cluster)
    as_label["metadata"]["labels"][config.INJECT_ANNOTATION] = "false"
    assert not specs.wants_injection(as_label, spec)
    cluster["metadata"]["annotations"] = {config.INJECT_ANNOTATION: "false"}
    assert not specs.wants_injection(cluster, spec)
    assert admission_patch(cluster, [h]) == (None, "no RayHistory selects this cluster")


@pytest.mark.parametrize("breakage", [
    lambda c: c["spec"].__setitem__("headGroupSpec", "not an object"),
    lambda c: c["spec"]["headGroupSpec"]["template"]["spec"].__setitem__("containers", []),
    lambda c: c["spec"].__setitem__("workerGroupSpecs", {"a": 1}),
    lambda c: c.__setitem__("spec", None),
    lambda c: c["metadata"].pop("name"),
])
def test_broken_clusters_are_admitted_unchanged_with_a_reason(breakage):
    cluster = example_cluster()
    breakage(cluster)
    patch, note = admission_patch(cluster, [history()])
    assert patch is None
    assert note.startswith("rayhistory: collector not injected")


def test_one_history_per_cluster_first_by_name():
    a = history({"storage": {"url": "file:///a"}}, name="b-second")
    b = history({"storage": {"url": "file:///b"}}, name="a-first")
    broken = history({"storage": {}}, name="0-broken")  # invalid spec: skipped, not an error
    patch, note = admission_patch(example_cluster(), [a, b, broken])
    assert patch["metadata"]["annotations"][config.HISTORY_ANNOTATION] == "rh/a-first"
    assert note == "collector injected by rh/a-first"


def injected_cluster() -> dict:
    cluster = example_cluster()
    patch = admission_patch(cluster, [history()])[0]
    return merge_patch(cluster, patch)


def test_an_update_that_drops_the_collector_gets_it_back():
    """`kubectl apply` of the user's manifest sends the pod templates without our container."""
    injected = injected_cluster()
    assert update_patch(injected, [history()]) == (None, "still injected")
    # What a client-side apply of the manifest leaves: the user's containers, our volumes kept.
    reapplied = copy.deepcopy(injected)
    original = example_cluster()["spec"]
    reapplied["spec"]["headGroupSpec"]["template"]["spec"]["containers"] = \
        original["headGroupSpec"]["template"]["spec"]["containers"]
    reapplied["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"] = \
        original["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    reapplied["spec"]["workerGroupSpecs"][0]["replicas"] = 3  # the user's own change stays
    patch, note = update_patch(reapplied, [history()])
    assert note == "collector re-injected by rh/history"
    assert set(patch) == {"spec"}  # never the finalizers: removing ours by hand must keep working
    fixed = merge_patch(reapplied, patch)
    assert fixed["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    fixed["spec"]["workerGroupSpecs"][0]["replicas"] = 2
    assert fixed["spec"] == injected["spec"]


def test_updates_leave_deleted_foreign_and_orphaned_clusters_alone():
    stripped = injected_cluster()
    stripped["spec"] = example_cluster()["spec"]
    deleting = copy.deepcopy(stripped)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert update_patch(deleting, [history()]) == (None, "being deleted")
    assert update_patch(example_cluster(), [history()]) == (None, "not injected at creation")
    patch, note = update_patch(stripped, [history(name="other")])
    assert patch is None and note == "rayhistory: RayHistory rh/history is gone: collector not re-injected"


def test_owner_from_kuberay_labels():
    cluster = example_cluster()
    cluster["metadata"]["labels"] = {"ray.io/originated-from-crd": "RayService", "ray.io/originated-from-cr-name": "svc"}
    assert specs.cluster_owner(cluster) == ("RayService", "svc")
    assert specs.cluster_owner(example_cluster()) == ("", "")


def test_spec_defaults_accept_minimal_spec():
    spec = HistorySpec.model_validate({"storage": {"url": "gs://b"}})
    assert spec.retention.max_age_ms == 30 * 86400 * 1000
    assert spec.injection.enabled and spec.collector.flush_interval == 5.0


def test_collector_env_and_server_args_are_what_those_parts_read():
    """The contract with the other parts, checked against their own settings (a renamed flag fails here)."""
    from rayhistory.cli import build_parser
    from rayhistory.collector.main import Settings as CollectorSettings
    from rayhistory.server.main import Settings as ServerSettings
    from rayhistory.config import env_name, settings_from_args

    h = history({"storage": {"url": "s3://b/p"}, "server": {"cacheMaxSessions": 9, "cacheMaxBytes": 123456789,
                                                              "tasksOnDiskAboveBytes": 5 << 20,
                                                              "loadTimeout": 33, "liveSessions": "storage",
                                                              "liveReloadSeconds": 7}})
    spec = parse_spec(h["spec"])
    collector = specs.build_collector_container(spec, "demo", "ns", ("RayJob", "j"), True, "ray-logs")
    assert {e["name"] for e in collector["env"]} <= {env_name(f) for f in CollectorSettings.model_fields}
    # issue 9, item 10: ingest stays on the pod's loopback; the kubelet probes the metrics port
    defaults = CollectorSettings()
    assert defaults.host == "127.0.0.1"
    assert collector["readinessProbe"]["httpGet"]["port"] == defaults.metrics_port
    assert [p["containerPort"] for p in collector["ports"]] == [defaults.metrics_port]
    args = specs.build_server_deployment_spec(h, spec)["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = settings_from_args(ServerSettings, build_parser("server").parse_args(args))
    assert (settings.port, settings.internal_port) == (config.SERVER_PORT, config.SERVER_INTERNAL_PORT)
    assert (settings.cache_max_sessions, settings.cache_max_bytes, settings.load_timeout) == (9, 123456789, 33)
    assert settings.tasks_on_disk_above_bytes == 5 << 20
    assert (settings.live_sessions, settings.live_reload_s) == ("storage", 7)


def test_a_foreign_ray_logs_volume_is_not_reused():
    cluster = example_cluster()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    head["volumes"] = [{"name": config.RAY_TEMP_VOLUME, "hostPath": {"path": "/var/log/ray"}}]
    patch, _ = admission_patch(cluster, [history()])
    pod = patch["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[config.RAY_TEMP_ROOT] == config.RAY_TEMP_VOLUME_FALLBACK
    assert {v["name"]: v for v in pod["volumes"]}[config.RAY_TEMP_VOLUME_FALLBACK] == {
        "name": config.RAY_TEMP_VOLUME_FALLBACK, "emptyDir": {}}


def test_the_server_cluster_role_in_rbac_yaml_is_the_one_the_code_names():
    """deploy/operator/rbac.yaml's rayhistory-server ClusterRole: exactly specs.SERVER_CLUSTER_ROLE_RULES (the live
    proxy's reads and --auth kubernetes' TokenReview and SubjectAccessReview, create only)."""
    docs = list(yaml.safe_load_all((Path(__file__).parents[2] / "deploy" / "operator" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d and d["kind"] == "ClusterRole" and d["metadata"]["name"] == config.SERVER_CLUSTER_ROLE)
    assert role["rules"] == specs.SERVER_CLUSTER_ROLE_RULES
    assert specs.server_auth_rules() == [r for r in role["rules"] if r["apiGroups"][0].endswith(".k8s.io")]


def test_servers_are_deployed_with_kubernetes_auth_and_the_crd_settings():
    from rayhistory.cli import build_parser
    from rayhistory.config import settings_from_args
    from rayhistory.server.main import Settings as ServerSettings

    def server_settings(server: dict) -> ServerSettings:
        h = history({"storage": {"url": "s3://b/p"}, "server": server})
        args = specs.build_server_deployment_spec(h, parse_spec(h["spec"]))["spec"]["template"]["spec"]["containers"][0]["args"]
        return settings_from_args(ServerSettings, build_parser("server").parse_args(args))

    default = server_settings({})
    assert (default.auth, default.auth_verb, default.auth_group, default.auth_resource, default.auth_cache_ttl_s) == \
        ("kubernetes", "get", "ray.io", "rayclusters", 30.0)
    custom = server_settings({"auth": {"verb": "list", "group": "", "resource": "pods", "cacheTtlSeconds": 5}})
    assert (custom.auth_verb, custom.auth_group, custom.auth_resource, custom.auth_cache_ttl_s) == \
        ("list", "", "pods", 5.0)
    assert server_settings({"auth": {"mode": "off"}}).auth == "off"
    with pytest.raises(ValueError):
        parse_spec({"storage": {"url": "s3://b"}, "server": {"auth": {"verb": "get --auth off"}}})


def test_a_trusted_proxy_reaches_the_server_settings():
    from rayhistory.cli import build_parser
    from rayhistory.config import settings_from_args
    from rayhistory.server.main import Settings as ServerSettings

    h = history({"storage": {"url": "s3://b/p"}, "server": {"auth": {"trustedProxies": ["10.0.0.0/8", "::1"],
                                                                      "proxyIdentity": "user-headers"}}})
    args = specs.build_server_deployment_spec(h, parse_spec(h["spec"]))["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = settings_from_args(ServerSettings, build_parser("server").parse_args(args))
    assert (settings.auth_trusted_proxies, settings.auth_proxy_identity) == (["10.0.0.0/8", "::1"], "user-headers")
    with pytest.raises(ValueError):
        parse_spec({"storage": {"url": "s3://b"}, "server": {"auth": {"trustedProxies": ["not-an-address"]}}})


def test_the_head_collector_gets_ray_s_token_as_the_ray_container_has_it():
    cluster = example_cluster()
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    ray = head["containers"][0]
    ray.setdefault("env", []).extend([
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray-token", "key": "token"}}},
        {"name": "RAY_AUTH_TOKEN_PATH", "value": "/etc/ray-token/token"},
    ])
    ray.setdefault("volumeMounts", []).append({"name": "ray-token", "mountPath": "/etc/ray-token"})
    head.setdefault("volumes", []).append({"name": "ray-token", "secret": {"secretName": "ray-token"}})
    patch, _ = admission_patch(cluster, [history()])
    collector = containers(patch["spec"]["headGroupSpec"]["template"])[config.COLLECTOR_CONTAINER]
    env = {e["name"]: e for e in collector["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "ray-token", "key": "token"}}
    assert env["RAY_AUTH_TOKEN_PATH"]["value"] == "/etc/ray-token/token"
    assert {"name": "ray-token", "mountPath": "/etc/ray-token", "readOnly": True} in collector["volumeMounts"]
    # workers do not poll: nothing of the token goes there
    for group in patch["spec"].get("workerGroupSpecs") or []:
        worker = containers(group["template"])[config.COLLECTOR_CONTAINER]
        assert not {e["name"] for e in worker["env"]} & set(specs.RAY_AUTH_ENV)


def test_the_server_gets_ray_s_token_from_the_named_secret():
    from rayhistory.config import env_name
    from rayhistory.server.main import Settings as ServerSettings

    h = history({"storage": {"url": "s3://b/p"}, "server": {"rayTokenSecret": {"name": "ray-token"}}})
    server = specs.build_server_deployment_spec(h, parse_spec(h["spec"]))["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in server["env"]}
    assert env["RAYHISTORY_RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "ray-token", "key": "token"}}
    assert "RAYHISTORY_RAY_AUTH_TOKEN" == env_name("ray_auth_token") and "ray_auth_token" in ServerSettings.model_fields
    plain = history({"storage": {"url": "s3://b/p"}})
    server = specs.build_server_deployment_spec(plain, parse_spec(plain["spec"]))["spec"]["template"]["spec"]["containers"][0]
    assert "RAYHISTORY_RAY_AUTH_TOKEN" not in {e["name"] for e in server["env"]}

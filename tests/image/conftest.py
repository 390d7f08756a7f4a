"""The container image built from deploy/Dockerfile (scripts/image.py), and its parts run from it.

The session fixture builds the image (podman's layer cache makes a rebuild with unchanged sources take
seconds). Without podman & co. the tests skip, or fail under CI=true: `make test` installs them first.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from scripts import image
from tests.backends import http_answers, in_ci


def require_image_tools() -> None:
    """Skip the calling test without podman & co., or fail it under CI=true."""
    missing = image.missing_tools()
    if missing:
        message = f"{', '.join(missing)} missing: run `make image-tools` (apt-get install {' '.join(image.APT_PACKAGES)})"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def image_name() -> str:
    require_image_tools()
    try:
        return image.build()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building deploy/Dockerfile failed: {exc}", pytrace=False)
    except SystemExit as exc:  # the base needs root once (debootstrap): say so, as for a missing tool
        if in_ci():
            pytest.fail(f"{exc} (CI=true: a missing test tool is an error, not a skip)", pytrace=False)
        pytest.skip(str(exc))


def run(image_name: str, *args: str, entrypoint: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return image.run_in_image(*args, name=image_name, entrypoint=entrypoint, timeout=timeout)


class Container:
    """One detached container on the host network; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, image_name: str, args: list[str], volumes: dict[Path, str], env: dict[str, str] | None = None,
                 read_only: bool = False):
        self.name = f"rayhistory-test-{uuid.uuid4().hex[:10]}"
        cmd = ["run", "-d", "--name", self.name, "--network=host"]
        if read_only:  # as the operator's and the server's Deployments run it: readOnlyRootFilesystem, /tmp emptyDir
            cmd += ["--read-only", "--tmpfs", "/tmp"]
        for host, inside in volumes.items():
            cmd += ["-v", f"{host}:{inside}"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        image.podman(*cmd, image_name, *args, capture=True)

    def wait_ready(self, url: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not http_answers(url):
            if not self.running():
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready at {url} after {timeout_s:.0f} s:\n{self.logs()}")
            time.sleep(0.1)

    def running(self) -> bool:
        out = image.podman("inspect", "--format", "{{.State.Running}}", self.name, check=False, capture=True)
        return out.stdout.strip() == "true"

    def stop(self, timeout_s: float = 60) -> int:
        image.podman("kill", "--signal", "TERM", self.name, capture=True)
        out = image.podman("wait", self.name, capture=True, timeout=timeout_s)
        return int(out.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        out = image.podman("logs", self.name, check=False, capture=True)
        return (out.stdout + out.stderr)[-4000:]

    def remove(self) -> None:
        image.podman("rm", "-f", "-t", "0", self.name, check=False, capture=True)


@contextlib.contextmanager
def container(image_name: str, args: list[str], volumes: dict[Path, str],
              env: dict[str, str] | None = None, read_only: bool = False) -> Iterator[Container]:
    c = Container(image_name, args, volumes, env, read_only)
    try:
        yield c
    finally:
        c.remove()


def shared_dir(path: Path) -> Path:
    """A folder the image's non-root user (uid 10001) may write to."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path

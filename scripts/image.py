"""Build deploy/Dockerfile with podman on a machine that reaches no container registry.

    python scripts/image.py tools     # apt-get install podman, buildah, runc, debootstrap (as root)
    python scripts/image.py base      # the local stand-in for python:3.11-slim (cached)
    python scripts/image.py build     # base + `podman build` -> localhost/rayhistory:<version>
    python scripts/image.py smoke     # quick checks of the built image, one summary line
    python scripts/image.py env       # shell `export` lines to run podman by hand on the same store
    python scripts/image.py bench     # cold / fresh-clone / warm build times, size -> bench-results/image.json

The Dockerfile is the one a plain `docker build` uses; only its base is made here: `debootstrap
--variant=minbase bookworm` from the Debian mirror apt is configured with, python3.11 + venv +
ca-certificates, a venv at /usr/local (where the official image keeps its python, so `python` and `pip`
resolve the same), tagged docker.io/library/python:3.11-slim, the name the FROM lines resolve to.

Podman runs with private configuration files under .tools/containers/ (host network, runc, cgroupfs,
file events, ulimits the sandbox accepts); nothing system-wide is changed. What is worth keeping between
clones (CI clones afresh) lives in $RAYHISTORY_CACHE (default ~/.cache/rayhistory): podman's store
(podman-storage/, so a fresh clone's build reuses the layers of the last one), the base's tarball under a
hash of its recipe (debootstrap runs again only when the recipe changes or the tarball is gone), and the
ray wheel the dashboard UI comes from (wheels/, seen by the build read-only through pip's find-links; a
local file wins over an equal one from the index). `rm -rf ~/.cache/rayhistory` starts from cold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rayhistory"
# podman's private configuration (in the checkout) and its store (in the cache, so that a fresh clone, as CI
# makes, reuses the layers of the last build); RAYHISTORY_PODMAN_DIR / _STORE name others (`bench`)
DEFAULT_CONF_DIR = TOOLS / "containers"


def conf_dir() -> Path:
    return Path(os.environ.get("RAYHISTORY_PODMAN_DIR") or DEFAULT_CONF_DIR)


def store_dir() -> Path:
    return Path(os.environ.get("RAYHISTORY_PODMAN_STORE") or cache_dir() / "podman-storage")


def cache_dir() -> Path:
    return Path(os.environ.get("RAYHISTORY_CACHE") or CACHE)


HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

RAY_VERSION = "2.60.0"  # the Dockerfile's RAY_VERSION: the wheel the dashboard UI build is taken from
APT_PACKAGES = ["podman", "buildah", "runc", "debootstrap", "uidmap"]
TOOL_BINARIES = ["podman", "buildah", "runc", "debootstrap"]

# The base image's recipe; its hash names the cached tarball and labels the imported image.
BASE_NAME = "docker.io/library/python:3.11-slim"
BASE_SUITE = "bookworm"
# debootstrap resolves no virtual packages: python3-venv needs python3-distutils named explicitly.
BASE_PACKAGES = ["python3.11", "python3-venv", "python3-distutils", "ca-certificates"]
BASE_SLIM = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
             "usr/share/locale", "var/log", "debootstrap"]
BASE_CHANGES = [
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
]
RECIPE_VERSION = 1  # bump when the steps below change in a way the lists above do not show

CONTAINERS_CONF = """\
# rayhistory's private podman configuration (scripts/image.py); CONTAINERS_CONF points here.
[containers]
netns = "host"
# the sandbox refuses higher hard limits than these
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

STORAGE_CONF = """\
# rayhistory's private podman store (scripts/image.py); CONTAINERS_STORAGE_CONF points here.
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""


def version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("no version in pyproject.toml")
    return match.group(1)


def image_name(tag: str | None = None) -> str:
    return f"localhost/rayhistory:{tag or version()}"


def missing_tools() -> list[str]:
    return [b for b in TOOL_BINARIES if shutil.which(b) is None]


def install_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:  # like chromium in the Makefile: say how, and let the image tests skip (fail in CI)
        print(f"{', '.join(missing)} missing: run 'sudo apt-get install {' '.join(APT_PACKAGES)}' for the image")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def podman_env() -> dict[str, str]:
    """The environment that points podman at the private configuration (written on first use)."""
    conf, graphroot = conf_dir(), store_dir()
    conf.mkdir(parents=True, exist_ok=True)
    graphroot.mkdir(parents=True, exist_ok=True)
    # runroot holds sockets whose paths must stay short: keep it in /tmp, one per store
    tag = hashlib.sha256(str(graphroot.resolve()).encode()).hexdigest()[:8]
    runroot = Path(tempfile.gettempdir()) / f"rayhistory-podman-{os.getuid()}-{tag}"
    files = {
        conf / "containers.conf": CONTAINERS_CONF,
        conf / "storage.conf": STORAGE_CONF.format(graphroot=graphroot, runroot=runroot),
    }
    for path, text in files.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return dict(os.environ, CONTAINERS_CONF=str(conf / "containers.conf"),
                CONTAINERS_STORAGE_CONF=str(conf / "storage.conf"))


def podman(*args: str, check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=podman_env(), check=check, text=True,
                          capture_output=capture, **kw)


def apt_mirror() -> str:
    """The Debian mirror apt uses (deb822 .sources or one-line .list), for debootstrap."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                if re.search(rf"^Suites:.*\b{BASE_SUITE}\b", stanza, re.M) and "security" not in stanza:
                    match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                    if match:
                        return match.group(1)
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                    return parts[1]
    return "http://deb.debian.org/debian"


def base_recipe_hash() -> str:
    recipe = json.dumps([RECIPE_VERSION, BASE_SUITE, BASE_PACKAGES, BASE_SLIM, BASE_CHANGES])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_tarball() -> Path:
    return cache_dir() / f"base-{BASE_SUITE}-py311-{base_recipe_hash()}.tar"


def make_base_tarball(dest: Path) -> None:
    """debootstrap + venv in a chroot (no /proc or /sys mounted: neither step needs them)."""
    if os.geteuid() != 0:
        raise SystemExit("debootstrap needs root: run `sudo make image` once (the tarball is cached)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=dest.parent))
    rootfs = work / "rootfs"
    try:
        mirror = apt_mirror()
        print(f"image: debootstrap {BASE_SUITE} from {mirror} (once; cached as {dest})", flush=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                        BASE_SUITE, str(rootfs), mirror], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["chroot", str(rootfs), "/usr/bin/python3.11", "-m", "venv", "/usr/local"], check=True)
        subprocess.run(["chroot", str(rootfs), "/usr/local/bin/python", "-c", "import ssl, venv, ensurepip"],
                       check=True)
        for rel in BASE_SLIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        (rootfs / "usr/local/bin/Activate.ps1").unlink(missing_ok=True)
        shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)
        partial = dest.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
                       check=True)
        partial.rename(dest)
    finally:
        # debootstrap mounts proc and sys (and may bind-mount /dev) in the target and unmounts them when it
        # ends; after a failure some may be left: unmount them, and never delete through a mount point.
        if unmount_under(work):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"image: {work} still has mounts; left in place", file=sys.stderr)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1].replace("\\040", " ") for line in fh]
    return [p for p in points if p.startswith(prefix)]


def unmount_under(path: Path) -> bool:
    """Unmount everything mounted below `path`, deepest first; True when nothing is left mounted."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    return not mounts_under(path)


def base_in_store() -> bool:
    out = podman("image", "inspect", "--format", '{{index .Labels "rayhistory.base"}}', BASE_NAME,
                 check=False, capture=True)
    return out.returncode == 0 and out.stdout.strip() == base_recipe_hash()


def ensure_base() -> None:
    if base_in_store():
        return
    tarball = base_tarball()
    if not tarball.is_file():
        make_base_tarball(tarball)
    changes = [*BASE_CHANGES, f"LABEL rayhistory.base={base_recipe_hash()}"]
    args = [a for c in changes for a in ("--change", c)]
    podman("import", "--quiet", *args, str(tarball), BASE_NAME, stdout=subprocess.DEVNULL)


def fill_wheelhouse() -> None:
    """Put the ray wheel (about 70 MB; the dashboard UI build is taken from it) in the cache once, so that a
    fresh clone's build does not download it again. Best effort: without it the build downloads it itself.
    (The other wheels are not cached: pip resolves them inside the build, and some are sdists.)"""
    wheels = cache_dir() / "wheels"
    pattern = f"ray-{RAY_VERSION}-cp311-*manylinux*x86_64.whl"
    if any(wheels.glob(pattern)):
        return
    wheels.mkdir(parents=True, exist_ok=True)
    local = sorted((TOOLS / "wheels").glob(pattern))  # `make dashboard` keeps it there
    if local:
        shutil.copy2(local[0], wheels / local[0].name)
        return
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
           "--dest", str(wheels), f"ray=={RAY_VERSION}"]
    try:
        subprocess.run(cmd, check=True, env=env)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"image: ray wheel not cached ({exc}); the build downloads it", file=sys.stderr)


def build(tag: str | None = None, context: Path = ROOT) -> str:
    """The image from deploy/Dockerfile (in `context`), as localhost/rayhistory:<tag>; returns its name."""
    ensure_base()
    fill_wheelhouse()
    name = image_name(tag)
    args = ["build", "--pull=never", "-f", str(context / "deploy" / "Dockerfile"), "-t", name]
    if HOST_CA.is_file():
        # TLS to PyPI may go through the host's egress proxy: its CA bundle, for the build only,
        # mounted over the image's own bundle (which the finished image keeps).
        args += ["-v", f"{HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro",
                 "--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    wheels = cache_dir() / "wheels"
    if wheels.is_dir() and any(wheels.glob("*.whl")):
        # on /mnt, empty in every Debian image: a new mount point would stay in the image as an empty folder
        args += ["-v", f"{wheels}:/mnt:ro", "--build-arg", "PIP_FIND_LINKS=/mnt"]
    podman(*args, str(context))
    return name


def run_in_image(*args: str, name: str | None = None, entrypoint: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["run", "--rm", "--network=host"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return podman(*cmd, name or image_name(), *args, check=False, capture=True, timeout=timeout)


TEST_ONLY = ["pytest", "ray", "moto", "playwright", "kmock", "trustme", "psutil", "jsonschema", "boto3"]
COMPILERS = ["gcc", "cc", "c++", "g++", "clang", "make"]


def smoke(name: str | None = None) -> int:
    """Quick checks of a built image; prints one line, returns the exit code."""
    name = name or image_name()
    problems, notes = [], []
    inspect = podman("image", "inspect", "--format", "{{.Size}} {{.Config.User}}", name, check=False, capture=True)
    if inspect.returncode:
        print(f"image-smoke: {name} not built (run `make image`)")
        return 1
    size, user = inspect.stdout.split()
    notes.append(f"{int(size) / 1e6:.0f} MB")
    start = time.monotonic()
    for part in ["", "collector", "server", "operator", "mark-dead"]:
        out = run_in_image(*([part] if part else []), "--help", name=name)
        if out.returncode or "usage: rayhistory" not in out.stdout:
            problems.append(f"`rayhistory {part} --help` failed: {out.stderr.strip()[-200:]}")
    notes.append(f"5 --help in {time.monotonic() - start:.1f} s")
    probe = (
        "import importlib.util as u, json, os, shutil; "
        f"print(json.dumps([os.getuid(), [m for m in {TEST_ONLY!r} if u.find_spec(m)], "
        f"[c for c in {COMPILERS!r} if shutil.which(c)], "
        "os.path.isfile(os.path.join(os.environ['RAYHISTORY_DASHBOARD_DIR'], 'index.html'))]))"
    )
    out = run_in_image("-c", probe, name=name, entrypoint="python")
    if out.returncode:
        problems.append(f"probe failed: {out.stderr.strip()[-200:]}")
    else:
        uid, test_only, compilers, ui = json.loads(out.stdout)
        if uid == 0 or user in ("", "0", "root"):
            problems.append("runs as root")
        if test_only:
            problems.append(f"test-only packages: {test_only}")
        if compilers:
            problems.append(f"compilers: {compilers}")
        if not ui:
            problems.append("no dashboard UI build")
        notes.append(f"uid {uid}, no compiler, no test packages, dashboard UI present")
    status = "ok" if not problems else "FAILED: " + "; ".join(problems)
    print(f"image-smoke {name}: {status} ({', '.join(n for n in notes if n)})")
    return 0 if not problems else 1


def bench() -> dict:
    """Build times, image size and start time; written to bench-results/image.json.

    cold: empty cache (debootstrap, every download, empty store); empty_store: base tarball and ray wheel
    cached but podman's store empty; fresh_clone: a new copy of the sources on this machine's cache (what CI
    meets on its second run); warm_no_change: the same build again; warm_code_change: one line of server/
    changed (only the last pip step and what follows run again). Bench builds are tagged :bench.
    """
    results: dict = {"command": "python scripts/image.py bench"}

    def timed(label: str | None, env: dict[str, str], context: Path = ROOT) -> None:
        start = time.monotonic()
        subprocess.run([sys.executable, __file__, "build", "--tag", "bench", "--context", str(context)], check=True,
                       env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        if label:
            results[label + "_s"] = round(time.monotonic() - start, 1)
            print(f"image bench: {label} {results[label + '_s']} s", flush=True)

    def copy_sources(dest: Path) -> Path:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".venv", ".tools", ".git", "tests", ".demo", "test-output", "bench-results", "__pycache__"))
        return dest

    with tempfile.TemporaryDirectory(prefix="rayhistory-image-bench-", dir=cache_dir().parent) as tmp:
        t = Path(tmp)
        scratch = [{"RAYHISTORY_PODMAN_DIR": str(t / "cold"), "RAYHISTORY_CACHE": str(t / "cache")},
                   {"RAYHISTORY_PODMAN_DIR": str(t / "empty"), "RAYHISTORY_PODMAN_STORE": str(t / "empty-store")}]
        try:
            timed("cold", scratch[0])
            timed("empty_store", scratch[1])
            timed(None, {})  # this machine's store holds this checkout's build
            timed("fresh_clone", {"RAYHISTORY_PODMAN_DIR": str(t / "clone-conf")}, copy_sources(t / "clone"))
            timed("warm_no_change", {})
            changed = copy_sources(t / "changed")
            with open(changed / "server" / "__init__.py", "a") as fh:
                fh.write("\n# changed by scripts/image.py bench\n")
            timed("warm_code_change", {}, changed)
            size = podman("image", "inspect", "--format", "{{.Size}}", image_name("bench"), capture=True).stdout
            results["image_mb"] = round(int(size) / 1e6)
            starts = []
            for _ in range(3):
                start = time.monotonic()
                run_in_image("--version", name=image_name("bench"))
                starts.append(time.monotonic() - start)
            results["run_version_s"] = round(min(starts), 2)
        finally:
            podman("rmi", "-f", image_name("bench"), check=False, capture=True)
            for env in scratch:  # the scratch stores' overlay mounts and runroots go too
                subprocess.run(["podman", "system", "reset", "-f"], env={**podman_env_with(env)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results["machine"] = f"{os.cpu_count()} cores, shared with other builds"
    out = ROOT / "bench-results" / "image.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return results


def podman_env_with(overrides: dict[str, str]) -> dict[str, str]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        return podman_env()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["tools", "base", "build", "smoke", "env", "bench"])
    parser.add_argument("--context", type=Path, default=ROOT, help="build context (default: this checkout)")
    parser.add_argument("--tag", default=None, help="image tag (default: the version in pyproject.toml)")
    args = parser.parse_args(argv)
    if args.command == "tools":
        install_tools()
        return 0
    if args.command == "env":
        env = podman_env()
        print(f"export CONTAINERS_CONF={env['CONTAINERS_CONF']} CONTAINERS_STORAGE_CONF={env['CONTAINERS_STORAGE_CONF']}")
        return 0
    if missing_tools():
        raise SystemExit(f"missing {', '.join(missing_tools())}: run `make image-tools` (apt, as root)")
    if args.command == "base":
        start = time.monotonic()
        ensure_base()
        print(f"image: base {BASE_NAME} ready in {time.monotonic() - start:.1f} s")
        return 0
    if args.command == "build":
        start = time.monotonic()
        name = build(args.tag, args.context)
        print(f"image: {name} built in {time.monotonic() - start:.1f} s")
        return 0
    if args.command == "bench":
        bench()
        return 0
    return smoke(image_name(args.tag))


if __name__ == "__main__":
    sys.exit(main())

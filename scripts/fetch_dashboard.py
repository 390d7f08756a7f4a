"""Get the Ray Dashboard's frontend build out of the `ray` wheel, without installing Ray.

    python scripts/fetch_dashboard.py [--ray-version 2.60.0] [--dest .tools/dashboard]

`pip download ray==VERSION --no-deps` fetches the wheel (about 70 MB, kept in .tools/wheels/ so a
second run downloads nothing), and only ray/dashboard/client/build/ (about 9 MB) is unpacked into
DEST. The build is the same in every platform's wheel. The history server then finds it with
`--dashboard-dir DEST` (or RAYHISTORY_DASHBOARD_DIR=DEST); the container image does the same.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BUILD_IN_WHEEL = "ray/dashboard/client/build/"
VERSION_FILE = "RAY_VERSION"


def extract_build(wheel: Path, dest: Path, version: str) -> int:
    """Unpack the build folder of `wheel` into `dest` (replacing it whole); returns the file count."""
    staging = Path(tempfile.mkdtemp(prefix=".dashboard-", dir=dest.parent))
    count = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.infolist():
                if not member.filename.startswith(BUILD_IN_WHEEL) or member.is_dir():
                    continue
                rel = member.filename[len(BUILD_IN_WHEEL):]
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise ValueError(f"unsafe path in wheel: {member.filename!r}")
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
        if not (staging / "index.html").is_file():
            raise ValueError(f"{wheel.name} has no {BUILD_IN_WHEEL}index.html")
        (staging / VERSION_FILE).write_text(version + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


def download_wheel(version: str, wheels: Path) -> Path:
    found = sorted(wheels.glob(f"ray-{version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--dest", str(wheels), f"ray=={version}"],
        check=True,
    )
    found = sorted(wheels.glob(f"ray-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no ray-{version} wheel in {wheels}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-version", default="2.60.0")
    parser.add_argument("--dest", type=Path, default=Path(".tools/dashboard"))
    parser.add_argument("--wheels", type=Path, default=Path(".tools/wheels"), help="where downloaded wheels are kept")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    marker = dest / VERSION_FILE
    if marker.is_file() and marker.read_text().strip() == args.ray_version and (dest / "index.html").is_file():
        print(f"dashboard build for ray {args.ray_version} already in {dest}")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    wheel = download_wheel(args.ray_version, args.wheels)
    count = extract_build(wheel, dest, args.ray_version)
    print(f"unpacked {count} files of the ray {args.ray_version} dashboard build into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

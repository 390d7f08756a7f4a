"""scripts/fetch_dashboard.py: only the dashboard build is unpacked from a ray wheel, safely and atomically."""

from __future__ import annotations

import zipfile

import pytest

from scripts import fetch_dashboard


def make_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_unpacks_only_the_build_and_replaces_an_old_one(tmp_path):
    wheel = make_wheel(tmp_path / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl", {
        "ray/__init__.py": b"# not wanted",
        "ray/dashboard/client/build/index.html": b"<html>",
        "ray/dashboard/client/build/static/js/main.js": b"js",
        "ray/dashboard/client/build/speedscope-1.5.3/index.html": b"ss",
    })
    dest = tmp_path / "dashboard"
    dest.mkdir()
    (dest / "stale.txt").write_text("from an older version")
    assert fetch_dashboard.extract_build(wheel, dest, "2.60.0") == 3
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["RAY_VERSION", "index.html", "speedscope-1.5.3/index.html", "static/js/main.js"]
    assert (dest / "static/js/main.js").read_bytes() == b"js"
    # a second run with the build present downloads nothing
    assert fetch_dashboard.main(["--dest", str(dest), "--wheels", str(tmp_path / "no-wheels")]) == 0
    assert not (tmp_path / "no-wheels").exists()


@pytest.mark.parametrize("members", [
    {"ray/dashboard/client/build/../../../../evil": b"x", "ray/dashboard/client/build/index.html": b""},
    {"ray/other.py": b""},
])
def test_unsafe_or_buildless_wheel_leaves_nothing_behind(tmp_path, members):
    wheel = make_wheel(tmp_path / "ray.whl", members)
    dest = tmp_path / "dashboard"
    with pytest.raises(ValueError):
        fetch_dashboard.extract_build(wheel, dest, "2.60.0")
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ray.whl"]
    assert not (tmp_path.parent / "evil").exists()

"""The folder operator/ must never shadow the standard library's `operator`, however Python is started."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB_OPERATOR = str(Path(sysconfig.get_paths()["stdlib"]) / "operator.py")
PROBE = "import operator, collections; print(operator.__file__); print(operator.itemgetter(1)('ab'))"


def _run(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


def test_import_operator_from_the_checkout_root_is_the_standard_module():
    # -c and -m put the current folder (the checkout) first on sys.path; -S skips site, so nothing has
    # imported `operator` before the folder could be found.
    for flags in ([], ["-S"]):
        assert _run(*flags, "-c", PROBE) == [STDLIB_OPERATOR, "b"]


def test_the_parts_import_under_the_project_package():
    lines = _run("-c", "import rayhistory.operator as o, rayhistory.server as s, rayhistory.collector as c; "
                       "print(o.__name__, s.__name__, c.__name__)")
    assert lines == ["rayhistory.operator", "rayhistory.server", "rayhistory.collector"]


def test_every_page_file_of_the_server_is_package_data():
    # the image installs the package (not the checkout): a page or style the package data misses is a 500 there
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rayhistory.server"]
    files = [p.name for p in (ROOT / "server").iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files, "the server's pages are not where this test looks"
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_every_benchmark_imports():
    """`make bench` and `make bench-server` run them; an import that broke would show only there."""
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    probe = "import importlib, sys; [importlib.import_module('benchmarks.' + n) for n in sys.argv[1:]]; print('ok')"
    assert len(names) >= 6 and _run("-c", probe, *names) == ["ok"]

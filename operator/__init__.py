"""rayhistory.operator: the Kopf operator. Import it only as `rayhistory.operator`.

Python puts the current folder first on sys.path for `python -m ...` and `python -c ...`, so run from a
checkout, `import operator` would find this folder before the standard library's module (a fresh venv
imports `operator` only after that, from runpy). When loaded under that top-level name, this file runs
the standard library's operator.py in its own namespace and so *is* the standard module: the folder
never shadows it. Only os is imported here, because contextlib and collections need `operator` first.
"""

if __name__ == "operator":
    import os as _os

    __file__ = _os.path.join(_os.path.dirname(_os.__file__), "operator.py")
    with open(__file__, encoding="utf-8") as _source:
        exec(compile(_source.read(), __file__, "exec"))
    del _os, _source

"""What every API module shares: handler types, errors, query parsing, the list machinery of Ray's state
API (filters, columns, counters), stored endpoint answers."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from .snapshot_model import Node, Snapshot, Transition


Query = Mapping[str, str]
Body = dict | list | str | bytes
Handler = Callable[[Snapshot, Query], tuple[int, Body]]

DEFAULT_LIMIT = 100
DRIVER_TASK_ID_PREFIX = "ffffffffffffffffffffffff"
_HEX = frozenset(string.hexdigits)


class ApiError(Exception):
    """A request the API refuses (bad filter, unknown id); `body()` is Ray's error envelope."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict:
        return {"result": False, "msg": self.message, "data": {}}


def _ok(data: Any, msg: str = "") -> dict:
    return {"result": True, "msg": msg, "data": data}


def _getall(query: Query, key: str) -> list[str]:
    if hasattr(query, "getall"):
        return list(query.getall(key, []))
    value = query.get(key)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    v = str(value).lower()
    if v in ("1", "true", "t", "yes", "y"):
        return True
    if v in ("0", "false", "f", "no", "n", ""):
        return False
    raise ApiError(400, f"Invalid boolean value {value!r}")


def _int_param(query: Query, key: str, default: int) -> int:
    value = query.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{key} must be an integer, got {value!r}") from None
    if number < 0:
        raise ApiError(400, f"{key} must not be negative, got {number}")
    return number


def _ms(ns: int) -> float:
    """Ray's `int(ns) // 1e6`: a float of whole milliseconds."""
    return ns // 1e6


def _nil(value: str) -> str | None:
    return value or None


def _json(text: str, default: Any) -> Any:
    return json.loads(text) if text else default


@lru_cache(maxsize=4096)
def _shared_json(text: str) -> Any:
    """Parsed JSON of a string-table value that many rows repeat (resources, selectors, extra data).
    Rows share the result: they are encoded and dropped, never changed (copy before changing one)."""
    return json.loads(text)


def _endpoint_json(snapshot: Snapshot, name: str) -> Any:
    data = snapshot.endpoints.get(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # the builder keeps only answers that decode; stored snapshots predate that
        return None


# ---- list API machinery (filters, columns, counters) -----------------------------------------------

class Filter:
    __slots__ = ("column", "equal", "value")

    def __init__(self, column: str, equal: bool, value: str):
        self.column, self.equal, self.value = column, equal, value

    def match(self, datum_value: Any) -> bool:
        """Ray's do_filter: strings compare case-insensitively; a missing value never equals."""
        v = self.value
        if isinstance(datum_value, bool):
            same = datum_value == _bool(v, False)
        elif isinstance(datum_value, int):
            try:
                same = datum_value == int(v)
            except ValueError:
                same = False
        elif isinstance(datum_value, str):
            same = datum_value.lower() == v.lower()
        else:
            same = datum_value == v
        return same if self.equal else not same


def parse_filters(query: Query, filterable: frozenset[str] | set[str]) -> list[Filter]:
    keys = _getall(query, "filter_keys")
    predicates = _getall(query, "filter_predicates")
    values = _getall(query, "filter_values")
    if not (len(keys) == len(predicates) == len(values)):
        raise ApiError(400, "filter_keys, filter_predicates and filter_values must have the same number of entries")
    filters = []
    for key, predicate, value in zip(keys, predicates, values):
        column = key.lower()
        if column not in filterable:
            raise ApiError(400, f"The given filter column {column} is not supported. "
                                f"Supported filter columns: {sorted(filterable)}")
        if predicate not in ("=", "!="):
            raise ApiError(400, f"Unsupported filter predicate {predicate} is given. Available predicates: =, !=.")
        filters.append(Filter(column, predicate == "=", value))
    return filters


def _list_body(rows: list, total: int, num_after_truncation: int, num_filtered: int) -> dict:
    return _ok({"result": {"total": total, "num_after_truncation": num_after_truncation, "num_filtered": num_filtered,
                           "result": rows, "partial_failure_warning": "", "warnings": None}})


def _list_options(query: Query) -> tuple[int, bool]:
    return _int_param(query, "limit", DEFAULT_LIMIT), _bool(query.get("detail"), False)


def _list_rows(rows: list[dict], query: Query, filterable: set[str], columns: tuple[str, ...],
               detail_columns: tuple[str, ...], sort_key: str) -> tuple[int, dict]:
    """The list API for small resources (actors, nodes, workers, jobs, placement groups, events)."""
    limit, detail = _list_options(query)
    filters = parse_filters(query, filterable)
    kept = [r for r in rows if all(f.column in r and f.match(r[f.column]) for f in filters)]
    kept.sort(key=lambda r: r[sort_key] or "")
    shown = columns + detail_columns if detail else columns
    out = [{c: r.get(c) for c in shown} for r in kept[:limit]]
    return 200, _list_body(out, len(rows), len(rows), len(kept))


def _with(handler: Callable[..., tuple[int, Body]], param: str) -> Handler:
    """Adapt a handler taking a path parameter: the runtime passes match_info merged into the query."""
    def adapted(s: Snapshot, query: Query) -> tuple[int, Body]:
        return handler(s, query, query[param])
    adapted.__name__ = handler.__name__
    return adapted


# ---- reading the snapshot ----------------------------------------------------------------------------

def _latest(transitions: list[Transition], field: str) -> Any:
    for t in reversed(transitions):
        if t.info.get(field):
            return t.info[field]
    return None


def _first_ts(transitions: list[Transition], state: str) -> int:
    return next((t.ts_ns for t in transitions if t.state == state), 0)


def _last_ts(transitions: list[Transition], state: str) -> int:
    return next((t.ts_ns for t in reversed(transitions) if t.state == state), 0)


def _node_resources(n: Node) -> dict:
    return _latest(n.transitions, "resources") or {}


def _head_node_id(s: Snapshot) -> str:
    for n in s.nodes:
        if "node:__internal_head__" in _node_resources(n):
            return n.node_id
    return s.nodes[0].node_id if s.nodes else ""

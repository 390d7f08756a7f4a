"""The storage layout: every object key the project reads or writes is built and parsed here.

Keys are relative to the store's root URL. Every object is written once under a name no other writer
can produce (a timestamp plus a writer id), so many collectors and server replicas write concurrently
without read-modify-write races. The layout is versioned by its first segment. See
docs/storage-layout.md for a worked example.

    v1/index/{namespace}/{cluster}/{session}/{kind}-{unix_ms}-{writer}.json
    v1/index-digests/{unix_ms}-{writer}.json.gz   (a server's copy of the index records it read: a cache)
    v1/sessions/{namespace}/{cluster}/{session}/events/{node_id}/{unix_ms}-{writer}-{seq}.jsonl.gz
    v1/sessions/{namespace}/{cluster}/{session}/logs/{node_id}/{relpath}/{generation}-{offset}.part
    v1/sessions/{namespace}/{cluster}/{session}/endpoints/{endpoint}/{unix_ms}-{writer}.json
        (an imported session's captured answers are endpoints too: capture_{digest of the request})
    v1/sessions/{namespace}/{cluster}/{session}/snapshots/v{format}/{unix_ms}-{writer}.snap
    v1/sessions/{namespace}/{cluster}/{session}/platform_events/{unix_ms}-{writer}-{seq}.jsonl.gz
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlencode

LAYOUT_VERSION = "v1"

# Every name that becomes part of a key is checked here, and only here: ASCII only (re.ASCII: `\d` is
# 0-9, not every Unicode digit), matched in full (fullmatch: `$` would accept a final "\n"), and bounded
# in length, so no name can escape its prefix, collide with another, or grow a key without limit.

# Kubernetes object names (DNS-1123 subdomain, relaxed to allow upper case for local use).
MAX_NAME_LEN = 253
_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?", re.ASCII)
# Ray session folders: session_2026-11-23_13-47-55_556257_9670 (the last part is the head's pid).
MAX_SESSION_LEN = 64
SESSION_RE = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6}_\d{1,10}", re.ASCII)
_NODE_ID_RE = re.compile(r"[0-9a-f]{56}", re.ASCII)
_WRITER_RE = re.compile(r"[A-Za-z0-9]{1,64}", re.ASCII)
_ENDPOINT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.@+=,%-]{1,255}", re.ASCII)
MAX_RELPATH_LEN = 1024
# Kubernetes object uids (RFC 4122 UUIDs in practice; bounded, never part of a key).
_K8S_UID_RE = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)
# Kinds whose Kubernetes Events the operator keeps (operator/platform_events.py).
PLATFORM_EVENT_KINDS = frozenset({"RayCluster", "RayJob", "RayService", "Pod"})
MAX_RELPATH_DEPTH = 16


class LayoutError(ValueError):
    """A name that cannot be part of a key (it would escape its prefix or collide)."""


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        raise LayoutError(f"invalid {what}: {value[:80]!r}" if isinstance(value, str) else f"invalid {what}: not a string")
    return value


def is_session_name(value: object) -> bool:
    """Whether `value` is a Ray session name (the check without the exception, for hot paths)."""
    return isinstance(value, str) and len(value) <= MAX_SESSION_LEN and SESSION_RE.fullmatch(value) is not None


def check_name(value: str, what: str = "name") -> str:
    return _check(value, _NAME_RE, what)


def check_session(value: str) -> str:
    if not is_session_name(value):
        raise LayoutError(f"invalid session name: {value[:80]!r}" if isinstance(value, str)
                          else "invalid session name: not a string")
    return value


def check_node_id(value: str) -> str:
    return _check(value, _NODE_ID_RE, "node id (56 hex digits)")


_HEX_ID_RE = re.compile(r"[0-9a-f]{2,64}", re.ASCII)


def is_hex_id(value: object) -> bool:
    """A Ray id in the dashboard's hex form (job, actor, task ids): lowercase hex, at most 32 bytes."""
    return isinstance(value, str) and _HEX_ID_RE.fullmatch(value) is not None


def check_k8s_uid(value: str) -> str:
    return _check(value, _K8S_UID_RE, "Kubernetes uid")


def check_platform_event_kind(value: str) -> str:
    if value not in PLATFORM_EVENT_KINDS:
        raise LayoutError(f"not a kind whose events are kept: {str(value)[:80]!r}")
    return value


def check_writer(value: str) -> str:
    return _check(value, _WRITER_RE, "writer id")


def check_relpath(relpath: str) -> str:
    """A log file path relative to the session's logs folder; never leaves it."""
    if (not isinstance(relpath, str) or not relpath or len(relpath) > MAX_RELPATH_LEN
            or relpath.count("/") >= MAX_RELPATH_DEPTH):
        raise LayoutError(f"invalid log path: {relpath[:80]!r}" if isinstance(relpath, str) else "invalid log path")
    for part in relpath.split("/"):
        if part in ("", ".", "..") or not _PATH_SEGMENT_RE.fullmatch(part):
            raise LayoutError(f"invalid log path: {relpath[:80]!r}")
    return relpath


def new_writer_id() -> str:
    """A random id for one writer process; makes its keys unique without coordination."""
    return secrets.token_hex(6)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def session_start_ms(session: str) -> int:
    """Ray encodes the session's start (local time of the head, taken as UTC) in its name."""
    import datetime as _dt

    check_session(session)
    _, day, clock, micros, _pid = session.split("_")
    stamp = _dt.datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H-%M-%S").replace(tzinfo=_dt.timezone.utc)
    return int(stamp.timestamp() * 1000) + int(micros) // 1000


@dataclass(frozen=True, order=True)
class SessionRef:
    """Where one Ray session of one RayCluster lives."""

    namespace: str
    cluster: str
    session: str

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")
        check_name(self.cluster, "cluster name")
        check_session(self.session)

    @property
    def tail(self) -> str:
        return f"{self.namespace}/{self.cluster}/{self.session}"


class IndexKind(str, Enum):
    LIVE = "live"  # a collector saw the session on a node
    FLUSHED = "flushed"  # a collector finished its final flush for a node
    DEAD = "dead"  # the session is over (operator finalizer, mark-dead, head restart)


# ---- prefixes ----------------------------------------------------------------------------------

def index_root() -> str:
    return f"{LAYOUT_VERSION}/index/"


def index_cluster_prefix(namespace: str, cluster: str) -> str:
    return f"{LAYOUT_VERSION}/index/{check_name(namespace, 'namespace')}/{check_name(cluster, 'cluster name')}/"


def index_session_prefix(ref: SessionRef) -> str:
    return f"{LAYOUT_VERSION}/index/{ref.tail}/"


def index_digests_prefix() -> str:
    # beside the index, not in it: a listing of the index never returns a digest
    return f"{LAYOUT_VERSION}/index-digests/"


def session_prefix(ref: SessionRef) -> str:
    return f"{LAYOUT_VERSION}/sessions/{ref.tail}/"


def events_prefix(ref: SessionRef) -> str:
    return session_prefix(ref) + "events/"


def logs_prefix(ref: SessionRef, node_id: str | None = None) -> str:
    base = session_prefix(ref) + "logs/"
    return base if node_id is None else base + check_node_id(node_id) + "/"


def log_file_prefix(ref: SessionRef, node_id: str, relpath: str) -> str:
    return logs_prefix(ref, node_id) + check_relpath(relpath) + "/"


def endpoints_prefix(ref: SessionRef, endpoint: str | None = None) -> str:
    base = session_prefix(ref) + "endpoints/"
    return base if endpoint is None else base + _check(endpoint, _ENDPOINT_RE, "endpoint name") + "/"


def snapshots_prefix(ref: SessionRef, format_version: int) -> str:
    return session_prefix(ref) + f"snapshots/v{int(format_version)}/"


def platform_events_prefix(ref: SessionRef) -> str:
    return session_prefix(ref) + "platform_events/"


# ---- object keys -------------------------------------------------------------------------------

def index_record_key(ref: SessionRef, kind: IndexKind, writer: str, at_ms: int | None = None) -> str:
    check_writer(writer)
    return index_session_prefix(ref) + f"{IndexKind(kind).value}-{at_ms if at_ms is not None else now_ms():013d}-{writer}.json"


def index_digest_key(writer: str, at_ms: int | None = None) -> str:
    check_writer(writer)
    return index_digests_prefix() + f"{at_ms if at_ms is not None else now_ms():013d}-{writer}.json.gz"


def is_index_digest_key(key: str) -> bool:
    prefix = index_digests_prefix()
    return key.startswith(prefix) and _DIGEST_NAME_RE.fullmatch(key[len(prefix):]) is not None


def event_batch_key(ref: SessionRef, node_id: str, writer: str, seq: int, at_ms: int | None = None) -> str:
    check_writer(writer)
    stamp = at_ms if at_ms is not None else now_ms()
    return events_prefix(ref) + f"{check_node_id(node_id)}/{stamp:013d}-{writer}-{int(seq):08d}.jsonl.gz"


def log_part_key(ref: SessionRef, node_id: str, relpath: str, generation: int, offset: int) -> str:
    """One uploaded range of a log file; its bytes start at `offset` of the file's `generation`."""
    return log_file_prefix(ref, node_id, relpath) + f"{int(generation):06d}-{int(offset):016d}.part"


def endpoint_key(ref: SessionRef, endpoint: str, writer: str, at_ms: int | None = None) -> str:
    check_writer(writer)
    return endpoints_prefix(ref, endpoint) + f"{at_ms if at_ms is not None else now_ms():013d}-{writer}.json"


def snapshot_key(ref: SessionRef, format_version: int, writer: str, at_ms: int | None = None) -> str:
    check_writer(writer)
    return snapshots_prefix(ref, format_version) + f"{at_ms if at_ms is not None else now_ms():013d}-{writer}.snap"


def platform_events_batch_key(ref: SessionRef, writer: str, seq: int, at_ms: int | None = None) -> str:
    """One flush of the Kubernetes Events the operator kept for a session: built from the session and the
    operator's own writer id and counter, never from anything an event says."""
    check_writer(writer)
    stamp = at_ms if at_ms is not None else now_ms()
    return platform_events_prefix(ref) + f"{stamp:013d}-{writer}-{int(seq):08d}.jsonl.gz"


def is_platform_events_batch_key(ref: SessionRef, key: str) -> bool:
    prefix = platform_events_prefix(ref)
    return key.startswith(prefix) and _BATCH_NAME_RE.fullmatch(key[len(prefix):]) is not None


# ---- captured answers of an imported session (`rayhistory import`) -----------------------------------

IMPORT_MANIFEST = "import_manifest"  # the endpoint holding what an import captured, skipped and truncated
CAPTURE_PREFIX = "capture_"
MAX_CAPTURED_REQUEST_LEN = 4096


def canonical_request(path: str, query: Iterable[tuple[str, str]]) -> str:
    """One dashboard request in one spelling: the path relative to the dashboard root (no leading '/'), then
    its query pairs sorted; the same request from the importer and from a browser gets the same name."""
    return path.lstrip("/") + "?" + urlencode(sorted((str(k), str(v)) for k, v in query))


def capture_endpoint(path: str, query: Iterable[tuple[str, str]]) -> str:
    """The endpoint name of a captured answer: a digest, so no part of a request (ids, globs, file names the
    dashboard listed) ever becomes a key segment of its own."""
    request = canonical_request(path, query)
    if len(request) > MAX_CAPTURED_REQUEST_LEN:
        raise LayoutError(f"request too long to capture: {request[:80]!r}")
    return CAPTURE_PREFIX + hashlib.sha256(request.encode()).hexdigest()[:40]


# ---- parsing keys back -------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexRecordName:
    ref: SessionRef
    kind: IndexKind
    at_ms: int
    writer: str


_INDEX_NAME_RE = re.compile(r"(live|flushed|dead)-(\d{13})-([A-Za-z0-9]{1,64})\.json", re.ASCII)
_DIGEST_NAME_RE = re.compile(r"\d{13}-[A-Za-z0-9]{1,64}\.json\.gz", re.ASCII)
_BATCH_NAME_RE = re.compile(r"(\d{13})-([A-Za-z0-9]{1,64})-(\d{8})\.jsonl\.gz", re.ASCII)
_PART_NAME_RE = re.compile(r"(\d{6})-(\d{16})\.part", re.ASCII)


def parse_index_record_key(key: str) -> IndexRecordName:
    parts = key.split("/")
    m = _INDEX_NAME_RE.fullmatch(parts[-1]) if len(parts) == 6 else None
    if m is None or parts[0] != LAYOUT_VERSION or parts[1] != "index":
        raise LayoutError(f"not an index record key: {key[:200]!r}")
    return IndexRecordName(SessionRef(parts[2], parts[3], parts[4]), IndexKind(m.group(1)), int(m.group(2)), m.group(3))


@dataclass(frozen=True)
class EventBatchName:
    node_id: str
    at_ms: int
    writer: str
    seq: int


def parse_event_batch_key(ref: SessionRef, key: str) -> EventBatchName:
    prefix = events_prefix(ref)
    node_id, _, name = key[len(prefix):].partition("/") if key.startswith(prefix) else ("", "", "")
    m = _BATCH_NAME_RE.fullmatch(name)
    if m is None:
        raise LayoutError(f"not an event batch key: {key[:200]!r}")
    return EventBatchName(check_node_id(node_id), int(m.group(1)), m.group(2), int(m.group(3)))


@dataclass(frozen=True)
class LogPartName:
    node_id: str
    relpath: str
    generation: int
    offset: int


def parse_log_part_key(ref: SessionRef, key: str) -> LogPartName:
    prefix = logs_prefix(ref)
    node_id, _, rest = key[len(prefix):].partition("/") if key.startswith(prefix) else ("", "", "")
    relpath, _, name = rest.rpartition("/")
    m = _PART_NAME_RE.fullmatch(name)
    if m is None:
        raise LayoutError(f"not a log part key: {key[:200]!r}")
    return LogPartName(check_node_id(node_id), check_relpath(relpath), int(m.group(1)), int(m.group(2)))


_WRITTEN_AT_RE = re.compile(r"(?:(?:live|flushed|dead)-)?(\d{13})-[A-Za-z0-9]{1,64}(?:-\d{8})?\.(?:json|jsonl\.gz|snap)",
                            re.ASCII)


def written_at_ms(key: str) -> int | None:
    """When the writer of an index record, event batch, endpoint answer or snapshot named it (its key's
    unix ms), or None for keys that carry no time (log parts)."""
    m = _WRITTEN_AT_RE.fullmatch(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def latest_key(keys: list[str]) -> str | None:
    """Keys named {unix_ms}-... sort by time; the newest write of an endpoint or snapshot wins."""
    return max(keys, key=lambda k: k.rsplit("/", 1)[-1]) if keys else None

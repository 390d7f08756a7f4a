"""Kubernetes Events kept for a session: the record the operator stores and the answer the server gives.

Pure code. The operator turns each Kubernetes Event (core/v1 JSON, as a watch delivers it) about an
injected RayCluster, its Pods or its owner (RayJob, RayService) into a `PlatformEventRecord`, bounded and
checked (`record_from_event`), and stores batches of them under the session's prefix (layout.py builds
the key; nothing in an event does). The server folds every stored record of a session (`merge_records`:
one per event uid, the latest version wins) and answers api/v0/platform_events in the shape of Ray 2.60's
own PlatformEventsHead (ray/dashboard/modules/platform_events: a RayEvent of type PLATFORM_EVENT per
Kubernetes Event, newest first), so the unmodified UI's Platform Events page shows them.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import re
from typing import Any

import msgspec

from . import layout
from .compression import InflateLimits, gunzip

MAX_MESSAGE_CHARS = 4096  # Kubernetes bounds an events.k8s.io note to 1 kB; core/v1 messages are not bounded
MAX_REASON_CHARS = 128
MAX_COMPONENT_CHARS = 253


class PlatformEventRecord(msgspec.Struct, omit_defaults=True):
    """One version of one Kubernetes Event, as kept in storage."""

    uid: str
    kind: str  # of the object the event is about: RayCluster, RayJob, RayService or Pod
    name: str
    namespace: str
    cluster: str  # the RayCluster it was kept for
    time_ns: int  # when it (last) happened: series.lastObservedTime, lastTimestamp, eventTime, firstTimestamp
    reason: str = ""
    message: str = ""
    type: str = "Normal"  # Normal or Warning
    component: str = ""  # who reported it: source.component, else reportingComponent
    count: int = 0
    resource_version: str = ""

    @property
    def version(self) -> tuple[int, int, int]:
        """Which of two versions of one event is the later one: by count, then time, then resourceVersion."""
        rv = int(self.resource_version) if self.resource_version.isdigit() else 0
        return (self.count, self.time_ns, rv)


_decoder = msgspec.json.Decoder(PlatformEventRecord)
_encoder = msgspec.json.Encoder()


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def parse_k8s_time(value: Any) -> int:
    """Nanoseconds since the epoch of a Kubernetes Time/MicroTime string (RFC3339); 0 if absent or bad."""
    if not isinstance(value, str) or not value or len(value) > 40:
        return 0
    text = value.replace("Z", "+00:00")
    frac_ns = 0
    if "." in text:  # Python parses at most 6 fractional digits: keep nanoseconds ourselves
        head, rest = text.split(".", 1)
        digits = re.match(r"\d*", rest, re.ASCII).group()
        if not digits or len(digits) > 9:
            return 0
        frac_ns = int(digits.ljust(9, "0"))
        text = head + rest[len(digits):]
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return 0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return int(stamp.timestamp()) * 1_000_000_000 + frac_ns


def involved_object(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, namespace) of what a core/v1 Event is about, if it is a kind whose events are kept."""
    obj = event.get("involvedObject")
    if not isinstance(obj, dict) or obj.get("kind") not in layout.PLATFORM_EVENT_KINDS:
        return None
    namespace = obj.get("namespace") or (event.get("metadata") or {}).get("namespace") or ""
    name = obj.get("name") or ""
    try:
        return (obj["kind"], layout.check_name(name, "object name"), layout.check_name(namespace, "namespace"))
    except layout.LayoutError:
        return None


def record_from_event(event: dict[str, Any], cluster: str) -> PlatformEventRecord:
    """The record to keep of a core/v1 Event about `cluster` or one of its objects; LayoutError when it
    cannot be kept (no uid, a kind not kept, names that are not Kubernetes names)."""
    meta = event.get("metadata") or {}
    found = involved_object(event)
    if found is None:
        raise layout.LayoutError("not an event about a RayCluster, RayJob, RayService or Pod")
    kind, name, namespace = found
    series = event.get("series") if isinstance(event.get("series"), dict) else {}
    time_ns = next((t for t in map(parse_k8s_time, (
        series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
        event.get("firstTimestamp"), meta.get("creationTimestamp"))) if t), 0)
    count = series.get("count") if isinstance(series.get("count"), int) else event.get("count")
    source = event.get("source") if isinstance(event.get("source"), dict) else {}
    rv = meta.get("resourceVersion")
    return PlatformEventRecord(
        uid=layout.check_k8s_uid(meta.get("uid") or ""), kind=kind, name=name, namespace=namespace,
        cluster=layout.check_name(cluster, "cluster name"), time_ns=time_ns,
        reason=_text(event.get("reason"), MAX_REASON_CHARS), message=_text(event.get("message"), MAX_MESSAGE_CHARS),
        type="Warning" if event.get("type") == "Warning" else "Normal",
        component=_text(source.get("component") or event.get("reportingComponent"), MAX_COMPONENT_CHARS),
        count=count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0,
        resource_version=rv if isinstance(rv, str) and rv.isdigit() and len(rv) <= 20 else "",
    )


def encode_batch(records: list[PlatformEventRecord]) -> bytes:
    return gzip.compress(b"".join(_encoder.encode(r) + b"\n" for r in records), mtime=0)


def decode_batch(data: bytes, max_bytes: int) -> list[PlatformEventRecord]:
    """The records of one stored batch; ValueError for a batch that is not one (or inflates past
    `max_bytes`). Names are checked again: storage is not trusted more than the API was."""
    lines = gunzip(data, InflateLimits(max_bytes, 1000.0)).splitlines()
    out = []
    for line in lines:
        if not line.strip():
            continue
        record = _decoder.decode(line)
        layout.check_k8s_uid(record.uid)
        layout.check_platform_event_kind(record.kind)
        layout.check_name(record.name, "object name")
        layout.check_name(record.namespace, "namespace")
        out.append(record)
    return out


def merge_records(records: list[PlatformEventRecord]) -> list[PlatformEventRecord]:
    """One record per event uid, its latest version; newest first (pure, any order in)."""
    latest: dict[str, PlatformEventRecord] = {}
    for r in records:
        known = latest.get(r.uid)
        if known is None or r.version > known.version:
            latest[r.uid] = r
    return sorted(latest.values(), key=lambda r: (r.time_ns, r.uid), reverse=True)


def rfc3339_ns(time_ns: int) -> str:
    """A protobuf Timestamp in JSON: UTC, 'Z', 0, 3, 6 or 9 fractional digits (as Ray's answer has it)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def ray_platform_event(record: PlatformEventRecord) -> dict[str, Any]:
    """The record as Ray 2.60's PlatformEventsHead shows a Kubernetes Event (its k8s_provider's RayEvent,
    through message_to_dict and to_google_style)."""
    custom = {"count": str(record.count)} if record.count > 1 else {}
    return {
        "eventId": base64.b64encode(record.uid.encode()).decode(),
        "sourceType": "CLUSTER_LIFECYCLE",
        "eventType": "PLATFORM_EVENT",
        "timestamp": rfc3339_ns(record.time_ns) if record.time_ns else "1970-01-01T00:00:00Z",
        "severity": "WARNING" if record.type == "Warning" else "INFO",
        "message": record.message,
        "platformEvent": {
            "source": {"platform": "KUBERNETES", "component": record.component,
                       "metadata": {"namespace": record.namespace, "rayClusterName": record.cluster}},
            "objectKind": record.kind,
            "objectName": record.name,
            "message": record.message,
            "reason": record.reason,
            "customFields": custom,
        },
        "sessionName": "",
        "nodeId": "",
    }


def platform_events_answer(records: list[PlatformEventRecord]) -> dict[str, Any]:
    """GET api/v0/platform_events: Ray's rest_response around every kept event, newest first."""
    return {"result": True, "msg": "Retrieved platform events",
            "data": {"events": [ray_platform_event(r) for r in merge_records(records)]}}

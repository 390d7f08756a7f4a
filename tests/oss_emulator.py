"""A small Alibaba Cloud OSS server for tests: no OSS emulator exists, so the suite brings its own.

It speaks the part of the OSS REST protocol that ossfs (through oss2 / aiooss2) uses, over real HTTP
on 127.0.0.1, so the OSS client code runs unmodified against it. Emulated, with OSS's own XML
bodies, headers and error codes:

- path-style addressing (`http://127.0.0.1:PORT/bucket/key`), which oss2 uses for IP endpoints;
- ListBuckets (GET /), GetBucketInfo (GET /bucket?bucketInfo), PutBucket (PUT /bucket);
- ListObjects v1 and v2 (prefix, delimiter, marker / continuation-token, max-keys, encoding-type=url),
  paged exactly like OSS (IsTruncated, NextMarker / NextContinuationToken, CommonPrefixes);
- PutObject, GetObject with Range (206 + Content-Range; an unsatisfiable range returns the whole
  object unless `x-oss-range-behavior: standard`, then 416, as OSS does), HeadObject,
  GetObjectMeta (HEAD ?objectMeta), DeleteObject, DeleteMultipleObjects (POST ?delete), AppendObject
  (POST ?append&position=N, with PositionNotEqualToLength / ObjectNotAppendable errors);
- x-oss-request-id on every answer, ETag, Last-Modified, x-oss-object-type and the CRC-64 (ECMA)
  header x-oss-hash-crc64ecma, which oss2 checks against its own; Content-MD5 is verified when sent;
  request bodies with Content-Length or chunked transfer encoding (aiooss2 streams uploads).

Not emulated: signatures and any authorization (every request is accepted, whatever its
credentials), virtual-hosted addressing, multipart upload, copy, versioning, ACLs, lifecycle,
storage classes, STS, HTTPS. Objects live in memory only and vanish with the server.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree as ET

OWNER_ID = "rayhistory-tests"
LOCATION = "oss-emulator"
MAX_KEYS_LIMIT = 1000


def _crc64_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xC96C5795D7870F42 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_ecma(data: bytes, crc: int = 0) -> int:
    """CRC-64/XZ (ECMA-182 polynomial, reflected), the checksum OSS returns; `crc` continues a previous one."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc = _CRC64_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


@dataclass
class StoredObject:
    data: bytes
    modified: float
    appendable: bool = False
    crc: int = 0

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.data).hexdigest().upper() + '"'


@dataclass
class Bucket:
    created: float
    objects: dict[str, StoredObject]


class OssError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def _add(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def _add_owner(parent: ET.Element) -> None:
    owner = _add(parent, "Owner")
    _add(owner, "ID", OWNER_ID)
    _add(owner, "DisplayName", OWNER_ID)


class OssEmulator:
    """The server: `start()` binds a free port of 127.0.0.1 and serves from a thread; `stop()` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._httpd, "not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        emulator = self

        class Handler(_OssHandler):
            state = emulator

        self._httpd = ThreadingHTTPServer((self._host, self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oss-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread:
            self._thread.join(10)
        self._httpd = self._thread = None

    def create_bucket(self, name: str) -> None:
        with self._lock:
            self._buckets.setdefault(name, Bucket(time.time(), {}))

    # ---- operations (called by the handler, under the lock) ----------------------------------

    def bucket(self, name: str) -> Bucket:
        try:
            return self._buckets[name]
        except KeyError:
            raise OssError(404, "NoSuchBucket", "The specified bucket does not exist.") from None

    def get_object(self, bucket: str, key: str) -> StoredObject:
        try:
            return self.bucket(bucket).objects[key]
        except KeyError:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.") from None


class _OssHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp and requests expect
    server_version = "AliyunOSS"
    state: OssEmulator

    def log_message(self, format, *args):  # noqa: A002 - quiet: the tests' output is for failures
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ---- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        self.request_id = uuid.uuid4().hex.upper()[:24]
        parts = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        self.body = self._read_body()
        try:
            self._check_md5()
            with self.state._lock:
                handler = self._route(method, bucket, key)
                handler(bucket, key)
        except OssError as err:
            root = ET.Element("Error")
            _add(root, "Code", err.code)
            _add(root, "Message", err.message)
            _add(root, "RequestId", self.request_id)
            _add(root, "HostId", self.headers.get("Host", ""))
            self._send(err.status, _xml(root), {"Content-Type": "application/xml", **err.headers})

    def _route(self, method: str, bucket: str, key: str):
        q = self.query
        if not bucket:
            if method == "GET":
                return self._list_buckets
        elif not key:
            if method == "GET" and "bucketInfo" in q:
                return self._bucket_info
            if method == "GET":
                return self._list_objects
            if method == "PUT":
                return self._put_bucket
            if method == "POST" and "delete" in q:
                return self._delete_multiple
        else:
            if method == "PUT":
                return self._put_object
            if method in ("GET", "HEAD"):
                return self._get_object
            if method == "DELETE":
                return self._delete_object
            if method == "POST" and "append" in q:
                return self._append_object
        raise OssError(501, "NotImplemented", f"{method} {self.path} is not emulated (see tests/oss_emulator.py)")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # aiooss2 streams uploads of unknown length with chunked transfer encoding
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _check_md5(self) -> None:
        sent = self.headers.get("Content-MD5")
        if sent and sent != base64.b64encode(hashlib.md5(self.body).digest()).decode():
            raise OssError(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_length: int | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("x-oss-request-id", self.request_id)
        self.send_header("Date", formatdate(usegmt=True))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _object_headers(self, obj: StoredObject) -> dict[str, str]:
        return {
            "ETag": obj.etag,
            "Last-Modified": formatdate(obj.modified, usegmt=True),
            "x-oss-object-type": "Appendable" if obj.appendable else "Normal",
            "x-oss-hash-crc64ecma": str(obj.crc),
            "x-oss-storage-class": "Standard",
            "Accept-Ranges": "bytes",
        }

    # ---- service and buckets -----------------------------------------------------------------

    def _list_buckets(self, bucket: str, key: str) -> None:
        root = ET.Element("ListAllMyBucketsResult")
        _add_owner(root)
        buckets = _add(root, "Buckets")
        for name, info in sorted(self.state._buckets.items()):
            node = _add(buckets, "Bucket")
            _add(node, "CreationDate", _iso(info.created))
            _add(node, "ExtranetEndpoint", self.headers.get("Host", ""))
            _add(node, "IntranetEndpoint", self.headers.get("Host", ""))
            _add(node, "Location", LOCATION)
            _add(node, "Name", name)
            _add(node, "StorageClass", "Standard")
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _put_bucket(self, bucket: str, key: str) -> None:
        self.state._buckets.setdefault(bucket, Bucket(time.time(), {}))
        self._send(200)

    def _bucket_info(self, bucket: str, key: str) -> None:
        info = self.state.bucket(bucket)
        root = ET.Element("BucketInfo")
        node = _add(root, "Bucket")
        _add(node, "CreationDate", _iso(info.created))
        _add(node, "ExtranetEndpoint", self.headers.get("Host", ""))
        _add(node, "IntranetEndpoint", self.headers.get("Host", ""))
        _add(node, "Location", LOCATION)
        _add(node, "Name", bucket)
        _add(node, "StorageClass", "Standard")
        _add_owner(node)
        _add(_add(node, "AccessControlList"), "Grant", "private")
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _list_objects(self, bucket: str, key: str) -> None:
        objects = self.state.bucket(bucket).objects
        q = self.query
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = min(int(q.get("max-keys") or 100), MAX_KEYS_LIMIT)
        start_after = q.get("continuation-token") or q.get("start-after", "") if v2 else q.get("marker", "")
        encode = q.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return quote(text, safe="") if encode else text

        entries: list[tuple[str, StoredObject | None]] = []  # (key or common prefix, object or None)
        seen_prefixes: set[str] = set()
        truncated = False
        for name in sorted(objects):
            if not name.startswith(prefix) or name <= start_after:
                continue
            if delimiter:
                cut = name.find(delimiter, len(prefix))
                if cut >= 0:
                    common = name[: cut + len(delimiter)]
                    if common in seen_prefixes or common <= start_after:
                        continue
                    if len(entries) == max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(common)
                    entries.append((common, None))
                    continue
            if len(entries) == max_keys:
                truncated = True
                break
            entries.append((name, objects[name]))

        root = ET.Element("ListBucketResult")
        _add(root, "Name", bucket)
        _add(root, "Prefix", enc(prefix))
        if v2:
            _add(root, "KeyCount", len(entries))
        else:
            _add(root, "Marker", enc(start_after))
        _add(root, "MaxKeys", max_keys)
        _add(root, "Delimiter", enc(delimiter))
        if encode:
            _add(root, "EncodingType", "url")
        _add(root, "IsTruncated", "true" if truncated else "false")
        if truncated:
            # the next page starts after the last entry (a common prefix as marker skips its keys, above)
            _add(root, "NextContinuationToken" if v2 else "NextMarker", enc(entries[-1][0]))
        for name, obj in entries:
            if obj is None:
                _add(_add(root, "CommonPrefixes"), "Prefix", enc(name))
                continue
            node = _add(root, "Contents")
            _add(node, "Key", enc(name))
            _add(node, "LastModified", _iso(obj.modified))
            _add(node, "ETag", obj.etag)
            _add(node, "Type", "Appendable" if obj.appendable else "Normal")
            _add(node, "Size", len(obj.data))
            _add(node, "StorageClass", "Standard")
            _add_owner(node)
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    def _delete_multiple(self, bucket: str, key: str) -> None:
        objects = self.state.bucket(bucket).objects
        try:
            request = ET.fromstring(self.body)
        except ET.ParseError:
            raise OssError(400, "MalformedXML", "The XML you provided was not well-formed.") from None
        quiet = (request.findtext("Quiet") or "false").lower() == "true"
        keys = [node.findtext("Key") or "" for node in request.findall("Object")]
        if not keys or len(keys) > 1000:
            raise OssError(400, "MalformedXML", "Between 1 and 1000 keys per request.")
        encode = self.query.get("encoding-type") == "url"
        root = ET.Element("DeleteResult")
        if encode:
            _add(root, "EncodingType", "url")
        for name in keys:
            objects.pop(name, None)  # OSS reports a missing key as deleted too
            if not quiet:
                _add(_add(root, "Deleted"), "Key", quote(name, safe="") if encode else name)
        self._send(200, _xml(root), {"Content-Type": "application/xml"})

    # ---- objects -----------------------------------------------------------------------------

    def _put_object(self, bucket: str, key: str) -> None:
        objects = self.state.bucket(bucket).objects
        obj = objects[key] = StoredObject(self.body, time.time(), crc=crc64_ecma(self.body))
        self._send(200, headers={"ETag": obj.etag, "x-oss-hash-crc64ecma": str(obj.crc)})

    def _append_object(self, bucket: str, key: str) -> None:
        objects = self.state.bucket(bucket).objects
        position = int(self.query.get("position") or 0)
        obj = objects.get(key)
        current = len(obj.data) if obj else 0
        if obj and not obj.appendable:
            raise OssError(409, "ObjectNotAppendable", "The object is not appendable.")
        if position != current:
            raise OssError(409, "PositionNotEqualToLength", "Position is not equal to file length.",
                           {"x-oss-next-append-position": str(current)})
        if obj is None:
            obj = objects[key] = StoredObject(b"", time.time(), appendable=True)
        obj.crc = crc64_ecma(self.body, obj.crc)
        obj.data += self.body
        obj.modified = time.time()
        self._send(200, headers={"ETag": obj.etag, "x-oss-next-append-position": str(len(obj.data)),
                                 "x-oss-hash-crc64ecma": str(obj.crc)})

    def _get_object(self, bucket: str, key: str) -> None:
        obj = self.state.get_object(bucket, key)
        headers = {"Content-Type": "application/octet-stream", **self._object_headers(obj)}
        if "objectMeta" in self.query:
            self._send(200, headers={k: v for k, v in headers.items() if k != "Content-Type"},
                       content_length=len(obj.data))
            return
        span = self._range(len(obj.data))
        if span is None:
            self._send(200, obj.data, headers)
            return
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(obj.data)}"
        self._send(206, obj.data[start: end + 1], headers)

    def _range(self, size: int) -> tuple[int, int] | None:
        """The inclusive byte span asked for, None for the whole object (OSS's rules)."""
        header = self.headers.get("Range", "")
        if not header.startswith("bytes=") or "," in header:
            return None
        first, _, last = header[len("bytes="):].partition("-")
        try:
            if first == "":
                start, end = max(size - int(last), 0), size - 1
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
        except ValueError:
            return None
        if start > end or start >= size:
            if self.headers.get("x-oss-range-behavior") == "standard":
                raise OssError(416, "InvalidRange", "The requested range cannot be satisfied.",
                               {"Content-Range": f"bytes */{size}"})
            return None
        return start, end

    def _delete_object(self, bucket: str, key: str) -> None:
        self.state.bucket(bucket).objects.pop(key, None)
        self._send(204)

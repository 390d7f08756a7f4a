"""The test servers themselves (tests/backends.py): the ones that check credentials refuse wrong ones,
and moto can go down and come back on the same port with its objects (the collector's outage tests
rely on that)."""

from __future__ import annotations

import pytest

from rayhistory.store import Store
from tests import backends

KEY = "v1/index/ray/c/session_2026-11-23_13-47-55_556257_9670/live-0000000000001-w1.json"


async def test_seaweedfs_checks_s3_signatures(backend_s3_seaweedfs: backends.RunningBackend):
    good = Store(backend_s3_seaweedfs.new_url(), backend_s3_seaweedfs.options)
    await good.put(KEY, b"signed")
    wrong = {**backend_s3_seaweedfs.options, "secret": "not-the-secret", "skip_instance_cache": True}
    with pytest.raises(PermissionError):
        await Store(good.url, wrong).get(KEY)


async def test_azurite_checks_the_account_key(backend_azure: backends.RunningBackend):
    good = Store(backend_azure.new_url(), backend_azure.options)
    await good.put(KEY, b"signed")
    forged = backend_azure.options["connection_string"].replace(backends.AZURITE_KEY, "Zm9yZ2VkLWtleQ==")
    with pytest.raises(Exception) as refused:
        await Store(good.url, {"connection_string": forged}).get(KEY)
    assert "403" in str(refused.value) or "AuthorizationFailure" in str(refused.value) \
        or isinstance(refused.value, PermissionError)


async def test_moto_outage_on_the_same_port_keeps_the_objects():
    with backends.moto_s3() as s3:
        # botocore's own retries off: s3fs still retries a few times, for about 2 s
        store = Store(s3.url, {**s3.options, "config_kwargs": {"retries": {"max_attempts": 1}}})
        await store.put(KEY, b"before")
        endpoint = s3.endpoint
        s3.stop()
        assert not backends.http_answers(endpoint)
        with pytest.raises(Exception, match="Could not connect"):
            await store.put(KEY + ".during", b"lost")
        s3.start()
        assert s3.endpoint == endpoint
        assert await store.get(KEY) == b"before"
        await store.put(KEY + ".after", b"after")
        assert [o.key for o in await store.list("v1/")] == [KEY, KEY + ".after"]


async def test_the_oss_emulator_speaks_what_ossfs_sends(backend_oss: backends.RunningBackend):
    """The parts of tests/oss_emulator.py the Store does not reach: folder listings, AppendObject,
    GetObjectMeta, OSS's rules for ranges and its CRC-64, through ossfs itself."""
    from tests.oss_emulator import crc64_ecma

    fs = Store(backend_oss.new_url(), backend_oss.options).fs
    bucket = fs._strip_protocol(backend_oss.buckets[-1])
    assert fs.append_object(f"{bucket}/logs/a.log", 0, b"hello ") == 6
    assert fs.append_object(f"{bucket}/logs/a.log", 6, b"world") == 11
    with pytest.raises(OSError, match="PositionNotEqualToLength"):
        fs.append_object(f"{bucket}/logs/a.log", 3, b"x")
    fs.pipe_file(f"{bucket}/logs/sub/b.log", b"b")
    listed = fs.ls(f"{bucket}/logs", detail=True)  # one level: delimiter "/" gives CommonPrefixes
    assert sorted((i["name"].rstrip("/").rsplit("/", 1)[-1], i["type"]) for i in listed) == [
        ("a.log", "file"), ("sub", "directory")]
    assert fs.info(f"{bucket}/logs/a.log")["size"] == 11
    assert fs.cat_file(f"{bucket}/logs/a.log") == b"hello world"
    assert fs.get_object(f"{bucket}/logs/a.log", 6, 10) == b"world"  # OSS ranges include their end
    assert crc64_ecma(b"123456789") == 0x995DC9BBDF1939FA  # the CRC-64/XZ check value

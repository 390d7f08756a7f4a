"""Credentials never reach a log line, an exception message, `Store.redacted_url`, `Store.url` or repr."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from rayhistory.store import ObjectNotFound, Store, StoreError, redact_url
from tests import backends

ACCESS_KEY = "AKIAREDACTIONTEST0001"
SECRET = "s3cr3t+Redaction/Test=="
URL_SECRET = quote(SECRET, safe="")  # as it must be written in a URL


def test_redact_url_drops_user_info_and_query_but_keeps_azure_containers():
    assert redact_url("s3://AK:SK@bucket/prefix?x=1") == "s3://bucket/prefix"
    assert redact_url("oss://AK:SK@bucket") == "oss://bucket"
    assert redact_url("abfs://container@account.dfs.core.windows.net/p?sig=SAS") == \
        "abfs://container@account.dfs.core.windows.net/p"
    assert redact_url("abfs://user:key@account.dfs.core.windows.net/p") == "abfs://account.dfs.core.windows.net/p"
    assert redact_url("file:///var/lib/rayhistory") == "file:///var/lib/rayhistory"


def test_credentials_in_a_gs_url_are_refused_without_echoing_them():
    with pytest.raises(StoreError) as refused:
        Store(f"gs://{ACCESS_KEY}:{URL_SECRET}@bucket")
    assert URL_SECRET not in str(refused.value) and ACCESS_KEY not in str(refused.value)


async def test_credentials_in_the_url_are_used_and_never_shown(backend_s3_moto: backends.RunningBackend, caplog):
    # moto accepts any key pair; the point is that this one travels from the URL to s3fs, and no further
    bucket_url = backend_s3_moto.new_url()
    url = bucket_url.replace("s3://", f"s3://{ACCESS_KEY}:{URL_SECRET}@")
    options = {"endpoint_url": backend_s3_moto.endpoint, "skip_instance_cache": True}
    caplog.set_level(logging.DEBUG)  # every logger, third-party ones included
    store = Store(url, options)
    assert store.fs.key == ACCESS_KEY and store.fs.secret == SECRET
    key = "v1/index/ray/c/session_2026-11-23_13-47-55_556257_9670/live-0000000000001-w1.json"
    await store.put(key, b"{}")
    assert [o.key for o in await store.list("v1/")] == [key]
    with pytest.raises(ObjectNotFound) as missing:
        await store.get(key + ".missing")

    shown = [repr(store), str(store), store.url, store.redacted_url, str(missing.value), repr(missing.value)]
    shown += [record.getMessage() for record in caplog.records]
    shown += [repr(value) for record in caplog.records for value in vars(record).values()]
    assert any("store opened" in text for text in shown)  # the log was captured, and held nothing
    assert not [text for text in shown if SECRET in text or URL_SECRET in text]
    assert not [text for text in shown if ACCESS_KEY in text and "rayhistory" in text]
    assert store.redacted_url == bucket_url

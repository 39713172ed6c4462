"""One object-store contract, run against the filesystem store and a real S3 server."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from storage.errors import Invalid
from storage.objects import FilesystemStore, ObjectNotFound, StoreUnavailable, check_url_signature


@pytest.fixture
def store(runtime):
    return runtime.store


def test_put_get_roundtrip_and_ranges(store):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    store.put("a/b/blob.bin", payload)
    assert store.exists("a/b/blob.bin")
    assert store.size("a/b/blob.bin") == len(payload)
    assert store.get("a/b/blob.bin") == payload
    assert store.get("a/b/blob.bin", offset=10, length=100) == payload[10:110]
    assert b"".join(store.stream("a/b/blob.bin", offset=len(payload) - 5)) == payload[-5:]


def test_put_from_stream_of_unknown_length(store):
    payload = os.urandom(200_000)
    store.put("s/stream.bin", io.BytesIO(payload))
    assert store.get("s/stream.bin") == payload


def test_overwrite_is_idempotent(store):
    store.put("k/x", b"first")
    store.put("k/x", b"first")
    assert store.get("k/x") == b"first"


def test_missing_object_is_not_found(store):
    assert not store.exists("nope/nothing")
    with pytest.raises(ObjectNotFound):
        store.get("nope/nothing")
    with pytest.raises(ObjectNotFound):
        store.size("nope/nothing")


def test_list_by_prefix_and_delete(store):
    for key in ("p/1", "p/2", "p/sub/3", "q/4"):
        store.put(key, key.encode())
    assert sorted(store.list("p/")) == ["p/1", "p/2", "p/sub/3"]
    store.delete("p/2")
    assert sorted(store.list("p/")) == ["p/1", "p/sub/3"]
    store.delete("p/2")  # deleting twice is harmless


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(Invalid):
        store.put(key, b"x")


def test_check_passes_when_up(store):
    store.check()


def _fetch(url: str, runtime):
    """GET a time-limited URL: S3 links go to S3; filesystem links through the web app."""
    if isinstance(runtime.store, FilesystemStore):
        from fastapi.testclient import TestClient

        from web.app import create_app

        parts = urlsplit(url)
        with TestClient(create_app(runtime.settings)) as client:
            return client.get(f"{parts.path}?{parts.query}")
    return httpx.get(url, timeout=10)


def _tamper(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = "signature" if "signature" in query else "X-Amz-Signature"
    value = query[name][0]
    query[name] = [value[:-1] + ("0" if value[-1] != "0" else "1")]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def test_time_limited_url_serves_then_refuses_tampering(runtime):
    runtime.store.put("films/study.pdf", b"%PDF-1.7 film")
    url = runtime.store.url("films/study.pdf", timedelta(minutes=5))
    ok = _fetch(url, runtime)
    assert ok.status_code == 200 and ok.content == b"%PDF-1.7 film"
    assert _fetch(_tamper(url), runtime).status_code == 403


def test_time_limited_url_expires(runtime):
    runtime.store.put("films/old.pdf", b"old")
    url = runtime.store.url("films/old.pdf", timedelta(seconds=1))
    time.sleep(2.2)
    assert _fetch(url, runtime).status_code in (403, 410)


def test_filesystem_signature_verdicts(tmp_path):
    assert check_url_signature("s", "k", int(time.time()) + 60, "bad") == "invalid"
    from storage.objects import url_signature

    past = int(time.time()) - 1
    assert check_url_signature("s", "k", past, url_signature("s", "k", past)) == "expired"


def test_filesystem_write_leaves_no_temp_files(tmp_path):
    store = FilesystemStore(tmp_path, public_base="http://x", secret="s")
    store.put("a/b", b"1")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


def test_filesystem_store_unwritable_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = FilesystemStore(blocker, public_base="http://x", secret="s")
    with pytest.raises(StoreUnavailable):
        store.put("a/b", b"1")
    with pytest.raises(StoreUnavailable):
        store.check()

"""The service fixtures start real servers that real clients can use."""

from __future__ import annotations

import io
import urllib.parse
import uuid

import httpx
import psycopg
import pytest
import redis
from minio import Minio


def test_postgres_answers_select_1(postgres_server):
    assert postgres_server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_fresh_database_is_empty_and_utf8(postgres_server):
    url = postgres_server.create_database()
    dbname = url.rsplit("/", 1)[1]
    assert dbname != postgres_server.dbname
    with psycopg.connect(postgres_server.dsn_for(dbname)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        # Patient names in this region are Chinese: the cluster must be UTF8.
        assert conn.execute("SELECT %s::text", ["澜沧 王小明"]).fetchone() == ("澜沧 王小明",)


def test_redis_ping(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.fixture
def s3(s3_server):
    return Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        secure=False,
    )


@pytest.fixture
def bucket(s3):
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    return name


def _put(s3, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/dicom")


def _get(s3, bucket: str, key: str) -> bytes:
    response = s3.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_s3_put_get(s3, bucket):
    _put(s3, bucket, "studies/1.2.3/ct.dcm", b"DICM" * 1000)
    assert _get(s3, bucket, "studies/1.2.3/ct.dcm") == b"DICM" * 1000


def test_s3_wrong_secret_is_refused(s3_server, bucket):
    impostor = Minio(
        s3_server.endpoint, access_key=s3_server.access_key, secret_key="wrong-secret",
        region=s3_server.region, secure=False,
    )
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied"):
        impostor.list_objects(bucket).__next__()


def _tamper_signature(url: str) -> str:
    """Change one hex digit of X-Amz-Signature, leaving the rest of the URL."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    tampered = []
    for key, value in query:
        if key == "X-Amz-Signature":
            value = value[:-1] + ("0" if value[-1] != "0" else "1")
        tampered.append((key, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(tampered)))


def test_s3_presigned_get_works_and_tampered_one_is_refused(s3, bucket):
    _put(s3, bucket, "report.pdf", b"%PDF-1.7 report")
    url = s3.presigned_get_object(bucket, "report.pdf")

    good = httpx.get(url)
    assert good.status_code == 200
    assert good.content == b"%PDF-1.7 report"

    bad_url = _tamper_signature(url)
    assert bad_url != url
    bad = httpx.get(bad_url)
    assert bad.status_code == 403
    assert b"SignatureDoesNotMatch" in bad.content or b"AccessDenied" in bad.content


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "crash"])
def test_s3_data_survives_stop_and_start(s3_server, s3, bucket, graceful):
    _put(s3, bucket, "kept.dcm", b"still here")
    endpoint = s3_server.endpoint
    s3_server.stop(graceful=graceful)
    try:
        # The store is really down: nothing listens on the port any more.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{s3_server.url}/healthz")
    finally:
        s3_server.start()  # the session fixture must be left running
    assert s3_server.endpoint == endpoint
    assert _get(s3, bucket, "kept.dcm") == b"still here"
    # And it still takes writes after the restart.
    _put(s3, bucket, "after.dcm", b"new")
    assert _get(s3, bucket, "after.dcm") == b"new"

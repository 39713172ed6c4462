"""multipart/related bodies (RFC 2387) as DICOMweb uses them (PS3.18 8.6.1.2).

Reading (STOW-RS) works on a body already in memory: requests of up to a few hundred MB
are read whole, which is simple and fast; a part is a slice of it (so a request peaks at
about twice its size). Writing (WADO-RS) is a generator: part headers, then the part's
chunks as the object store yields them, so a study is never held in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from imaging.dicomweb.negotiation import parse_media_type


CRLF = b"\r\n"


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart message with the given boundary."""


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its content."""

    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM data by chance (RFC 2046 5.1.1)."""
    return f"lancang-{uuid.uuid4().hex}"


def boundary_of(content_type: str) -> tuple[str, dict[str, str]]:
    """(media type, parameters) of a multipart Content-Type; raises when it has no boundary."""
    media_type, params = parse_media_type(content_type)
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MalformedMultipart("the Content-Type has no usable boundary parameter")
    return media_type, params


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(CRLF):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def _part(raw: bytes) -> Part:
    if raw.startswith(CRLF):  # no headers at all: the body starts after the blank line
        return Part({}, raw[2:])
    end = raw.find(CRLF + CRLF)
    if end < 0:
        raise MalformedMultipart("a body part has no blank line after its headers")
    return Part(_headers(raw[:end]), raw[end + 4:])


def split(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart body; the preamble and epilogue are ignored. Raises
    MalformedMultipart when the first or the closing delimiter is missing (a truncated upload)."""
    return list(iter_parts(body, boundary))


def iter_parts(body, boundary: str) -> Iterator[Part]:
    """split() one part at a time, over bytes or an mmap of a spooled body: only the part
    being handled is copied into memory. A truncated body is refused here, before any part
    is handed out, so a broken upload stores nothing."""
    dash = b"--" + boundary.encode("latin-1")
    delimiter = CRLF + dash
    if body[:len(dash)] == dash:
        position = len(dash)
    else:
        first = body.find(delimiter)
        if first < 0:
            raise MalformedMultipart("the body does not contain the boundary")
        position = first + len(delimiter)
    if body[position:position + 2] != b"--" and body.rfind(delimiter + b"--") < position:
        raise MalformedMultipart("the closing boundary is missing (truncated body?)")
    return _parts_from(body, position, delimiter)


def _parts_from(body, position: int, delimiter: bytes) -> Iterator[Part]:
    while body[position:position + 2] != b"--":
        line_end = body.find(CRLF, position)  # transport padding after the delimiter
        if line_end < 0:
            raise MalformedMultipart("the body ends inside a delimiter line")
        start = line_end + 2
        next_delimiter = body.find(delimiter, start)
        if next_delimiter < 0:
            raise MalformedMultipart("the closing boundary is missing (truncated body?)")
        yield _part(body[start:next_delimiter])
        position = next_delimiter + len(delimiter)


def part_header(content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers that open one part of a response."""
    lines = [f"Content-Type: {content_type}"] + [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def stream(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Encode (content type, chunks) pairs as a multipart body, lazily."""
    dash = f"--{boundary}".encode("latin-1")
    for content_type, chunks in parts:
        yield dash + CRLF + part_header(content_type)
        yield from chunks
        yield CRLF
    yield dash + b"--" + CRLF


def encode(parts: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A whole multipart body from (content type, bytes) pairs."""
    return b"".join(stream(((ct, (data,)) for ct, data in parts), boundary))

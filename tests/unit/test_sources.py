"""Decompression errors say where the compressed bytes broke, so a person can tell a cut-off
upload (the end) from damage part-way through; decoding itself is the standard library's."""

from __future__ import annotations

import gzip
import io
import random
import re

import pytest
import zstandard

from bulk_import.errors import MalformedFile
from bulk_import.ingest import Compression
from bulk_import.ingest.source import decoded

LIMIT = 1 << 30


def _payload() -> bytes:
    """About 4 MB that compresses poorly, so the compressed file is megabytes long too."""
    rng = random.Random(7)
    return b"".join(b"%032x\n" % rng.getrandbits(128) for _ in range(120_000))


def _read_all(raw: bytes, compression: Compression) -> bytes:
    stream = decoded(io.BytesIO(raw), compression, LIMIT, len(raw))
    return b"".join(iter(lambda: stream.read(1 << 16), b""))


def _compressed_offset(message: str) -> int:
    found = re.search(r"within the first ([\d,]+) of ([\d,]+) compressed bytes", message)
    assert found, message
    return int(found.group(1).replace(",", ""))


def test_gzip_damage_part_way_is_placed_near_where_it_is() -> None:
    body = bytearray(gzip.compress(_payload(), compresslevel=1))
    spot = len(body) * 7 // 10
    body[spot : spot + 64] = b"\xff" * 64  # deflate sees this at once: an invalid block type
    with pytest.raises(MalformedFile) as caught:
        _read_all(bytes(body), Compression.GZIP)
    message = str(caught.value)
    assert message.startswith("gzip data is corrupt or truncated within the first")
    assert f"of {len(body):,} compressed bytes" in message
    # The decoder reads ahead by one buffer (128 KiB for gzip), not by what it decompressed.
    assert spot < _compressed_offset(message) <= spot + (128 << 10)
    assert "invalid block type" in message
    assert message.endswith("upload the file again")


def test_gzip_damage_only_its_checksum_finds_is_named_as_such() -> None:
    body = bytearray(gzip.compress(_payload(), compresslevel=1))
    spot = len(body) * 3 // 10
    body[spot : spot + 64] = bytes(64)  # decodes to wrong bytes; only the CRC at the end tells
    with pytest.raises(MalformedFile) as caught:
        _read_all(bytes(body), Compression.GZIP)
    # Placed at the trailer, where the CRC is: its last 8 bytes.
    assert len(body) - 8 <= _compressed_offset(str(caught.value)) <= len(body)
    assert "CRC check failed" in str(caught.value)


def test_a_cut_off_gzip_upload_is_placed_at_its_end() -> None:
    whole = gzip.compress(_payload(), compresslevel=1)
    cut = whole[: len(whole) * 9 // 10]
    with pytest.raises(MalformedFile) as caught:
        _read_all(cut, Compression.GZIP)
    assert _compressed_offset(str(caught.value)) == len(cut)
    assert "ended before the end-of-stream marker" in str(caught.value)


def test_a_cut_off_zstd_upload_is_placed_at_its_end() -> None:
    whole = zstandard.ZstdCompressor(level=1).compress(_payload())
    cut = whole[: len(whole) * 9 // 10]
    with pytest.raises(MalformedFile) as caught:
        _read_all(cut, Compression.ZSTD)
    assert "zstd data is truncated or corrupt within the first" in str(caught.value)
    assert _compressed_offset(str(caught.value)) == len(cut)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_intact_streams_decode_whole(compression: Compression) -> None:
    payload = _payload()
    raw = (
        gzip.compress(payload)
        if compression is Compression.GZIP
        else zstandard.ZstdCompressor().compress(payload)
    )
    assert _read_all(raw, compression) == payload


@pytest.mark.parametrize(
    "raw",
    [b"sk_live_0123456789abcdef", gzip.compress(b"{}\n") + b"sk_trailing_0123456789"],
    ids=["not-gzip", "trailing-bytes"],
)
def test_gzip_errors_do_not_quote_the_data(raw: bytes) -> None:
    """gzip's own message quotes the first bytes it read ("Not a gzipped file (b'sk')")."""
    with pytest.raises(MalformedFile) as caught:
        _read_all(raw, Compression.GZIP)
    assert "Not a gzipped file" in str(caught.value)
    assert "(b'" not in str(caught.value)
    assert "'sk'" not in str(caught.value)

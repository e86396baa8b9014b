"""gzip with access points: a later invocation starts inflating near where the last one stopped.

A deflate stream can only be entered at a block boundary, with the 32 KiB of output before it
as the dictionary, and a boundary sits at any bit, not byte. Python's ``zlib`` offers neither
``Z_BLOCK`` (stop at a boundary) nor ``inflatePrime`` (feed the odd bits), so this reader drives
the system's zlib through ``ctypes``, the way zlib's own ``examples/zran.c`` does. It keeps
gzip's checks: the header and the trailer's CRC-32 and size of every member (for a member
entered at an access point, the CRC and size carried in the point), and a stream that ends
inside a member is an error, as with the ``gzip`` module.

``indexed_gzip`` does the same job but reads a cut-off or corrupted file to its end without an
error, and its index holds every point; one point is all a resume needs.
"""

from __future__ import annotations

import ctypes
import io
import struct
import zlib
from collections import deque
from functools import cache
from typing import IO, NamedTuple

WINDOW = 32 * 1024
# Output between access points; a resume inflates at most this much to reach its line.
SPACING = 1024 * 1024
# Access points kept: enough to reach back past what is read ahead of the reader's position.
KEPT_POINTS = 32
_IN_BYTES = 128 * 1024  # as the gzip module reads
_OUT_BYTES = 1024 * 1024

_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR = 0, 1, -5
_Z_STREAM_ERROR, _Z_MEM_ERROR, _Z_VERSION_ERROR = -2, -4, -6
_Z_NO_FLUSH, _Z_BLOCK = 0, 5
_GZIP_WBITS, _RAW_WBITS = 31, -15
_END_OF_BLOCK, _LAST_BLOCK = 128, 64
_POINT = struct.Struct("<QQBIQ")
# zlib's words for a gzip member's failed checks, as the gzip module words them.
_MESSAGES = {
    "incorrect header check": "Not a gzipped file",
    "unknown compression method": "Not a gzipped file (unknown compression method)",
    "incorrect data check": "CRC check failed",
    "incorrect length check": "Incorrect length of data produced",
}


class GzipError(zlib.error):
    """The data is not gzip, or is corrupt or cut off (the message says which)."""


class AccessPoint(NamedTuple):
    """Where inflating can start: a block boundary and what the decoder needs there."""

    out: int  # decompressed bytes before the point
    inp: int  # compressed bytes before the point (its first bits may sit in the byte before)
    bits: int  # bits of the byte at ``inp - 1`` that belong after the point (0-7)
    crc: int  # CRC-32 of the member's output before the point
    size: int  # the member's output before the point
    window: bytes  # up to 32 KiB of output before the point

    def __repr__(self) -> str:  # the window is file content: tokens, never in a log or trace
        return f"AccessPoint(out={self.out}, inp={self.inp}, bits={self.bits})"

    def fits(self, offset: int) -> bool:
        """Whether a reader may enter here to reach decompressed ``offset`` (at most a few
        spacings on: a point of another place, say, does not)."""
        return self.out <= offset <= self.out + KEPT_POINTS * SPACING

    def dump(self) -> bytes:
        return _POINT.pack(self.out, self.inp, self.bits, self.crc, self.size) + self.window

    @classmethod
    def load(cls, data: bytes) -> AccessPoint:
        """The point ``dump`` wrote; ValueError (or struct.error) for anything else."""
        out, inp, bits, crc, size = _POINT.unpack_from(data)
        window = data[_POINT.size :]
        if len(window) != min(WINDOW, out) or bits > 7:
            raise ValueError("not a whole access point")
        return cls(out, inp, bits, crc, size, window)


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


@cache
def _zlib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libz.so.1")  # Linux, Lambda's runtime: no ldconfig run to find it
    except OSError:
        from ctypes import util  # noqa: PLC0415 - ~15 ms (it imports subprocess): off Linux

        lib = ctypes.CDLL(util.find_library("z") or "libz.so.1")
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.inflateEnd.argtypes = [ctypes.c_void_p]
    lib.inflateReset2.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.inflatePrime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
    return lib


@cache
def available() -> bool:
    """Whether the system's zlib can be loaded (else gzip is read by the gzip module, and a
    resume reads it from its start)."""
    try:
        _zlib()
    except OSError:
        return False
    return True


class GzipReader(io.RawIOBase):
    """The decompressed content of ``raw`` (every member), from its start or from ``point``.

    ``raw`` must be positioned at the point's compressed offset (less one byte when the point
    has ``bits``), or at the start. ``points`` holds recent access points, newest last.
    """

    def __init__(self, raw: IO[bytes], point: AccessPoint | None = None) -> None:
        self._raw = raw
        self._started = False  # inflateInit2 done: inflateEnd owed
        self._z = _zlib()
        self._strm = _ZStream()
        self._out = ctypes.create_string_buffer(_OUT_BYTES)
        self._input = b""  # the bytes next_in points into: kept alive while zlib reads them
        self.points: deque[AccessPoint] = deque(maxlen=KEPT_POINTS)
        self._tail = b""  # the last WINDOW bytes of output
        self._eof = False
        self._next_point = SPACING
        self._crc = self._size = 0  # a resumed member's, checked against its trailer
        if point is None:
            self.offset = 0  # decompressed bytes before the next read
            self._in_base = 0  # compressed bytes before the current input block
            self._raw_member = False
            self._init(_GZIP_WBITS)
            return
        self.offset = point.out
        self._raw_member = True  # the trailer is checked here, against the carried CRC
        self._crc, self._size = point.crc, point.size
        self._in_base = point.inp
        self._init(_RAW_WBITS)
        if point.bits:
            byte = raw.read(1)
            if len(byte) != 1:
                raise GzipError("the file is shorter than its stored access point")
            self._check(self._z.inflatePrime(self._ref, point.bits, byte[0] >> (8 - point.bits)))
        if point.window:
            window = point.window
            self._check(self._z.inflateSetDictionary(self._ref, window, len(window)))
            self._tail = window
        self._next_point = point.out + SPACING
        self.points.append(point)  # an access point again for this run's resume points

    @property
    def _ref(self) -> ctypes.c_void_p:
        return ctypes.cast(ctypes.byref(self._strm), ctypes.c_void_p)

    def _init(self, wbits: int) -> None:
        version = self._z.zlibVersion()
        ret = self._z.inflateInit2_(self._ref, wbits, version, ctypes.sizeof(_ZStream))
        self._check(ret)
        self._started = True

    def _check(self, ret: int) -> None:
        if ret != _Z_OK:
            raise self._error(ret)

    def _error(self, ret: int) -> Exception:
        """The data's fault (GzipError), or zlib's own: out of memory, or a misuse (a bug)."""
        if ret == _Z_MEM_ERROR:
            return MemoryError("zlib could not allocate its state")
        if ret in (_Z_STREAM_ERROR, _Z_VERSION_ERROR):
            return RuntimeError(f"zlib refused the call ({ret})")
        return GzipError(self._message(ret))

    def _message(self, ret: int) -> str:
        msg = self._strm.msg
        text = msg.decode(errors="replace") if msg else f"zlib error {ret}"
        return _MESSAGES.get(text, text)

    @property
    def compressed_offset(self) -> int:
        """Compressed bytes consumed so far (for error messages and access points)."""
        left: int = self._strm.avail_in
        return self._in_base + len(self._input) - left

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, as many as the input at hand gives (as the gzip module reads):
        an error at the end of the data comes with the next call."""
        if size < 0:
            return b"".join(iter(lambda: self.read(_OUT_BYTES), b""))
        pieces: list[bytes] = []
        got = 0
        while got < size and not self._eof:
            if pieces and not self._feed():
                break  # the end of the input: what came so far first
            data = self._inflate(min(size - got, _OUT_BYTES))
            if data:
                pieces.append(data)
                got += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _feed(self) -> bool:
        """More compressed input for zlib; False at the end of ``raw``."""
        strm = self._strm
        if strm.avail_in:
            return True
        self._in_base += len(self._input)
        self._input = self._raw.read(_IN_BYTES)
        strm.next_in = ctypes.cast(ctypes.c_char_p(self._input), ctypes.c_void_p)
        strm.avail_in = len(self._input)
        return bool(self._input)

    def _inflate(self, size: int) -> bytes:
        strm = self._strm
        if not self._feed():
            raise GzipError("Compressed file ended before the end-of-stream marker was reached")
        want_point = self.offset >= self._next_point
        strm.next_out = ctypes.addressof(self._out)
        strm.avail_out = size
        ret = self._z.inflate(self._ref, _Z_BLOCK if want_point else _Z_NO_FLUSH)
        produced = size - strm.avail_out
        data = ctypes.string_at(self._out, produced) if produced else b""
        if ret not in (_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR):
            raise self._error(ret)
        if data:
            self._took(data)
        if ret == _Z_STREAM_END:
            self._member_end()
        elif want_point and strm.data_type & _END_OF_BLOCK and not strm.data_type & _LAST_BLOCK:
            self._point()
        return data

    def _took(self, data: bytes) -> None:
        self.offset += len(data)
        if self._raw_member:
            self._crc = zlib.crc32(data, self._crc)
            self._size += len(data)
        self._tail = (self._tail + data)[-WINDOW:] if len(data) < WINDOW else data[-WINDOW:]

    def _point(self) -> None:
        strm = self._strm
        if self._raw_member:
            crc, size = self._crc, self._size
        else:  # zlib keeps the gzip member's CRC in ``adler``, and counts its output
            crc, size = strm.adler, strm.total_out
        self.points.append(
            AccessPoint(
                self.offset, self.compressed_offset, strm.data_type & 7, crc, size, self._tail
            )
        )
        self._next_point = self.offset + SPACING

    def _member_end(self) -> None:
        """After a member: check a resumed member's trailer, then the next member, if any."""
        if self._raw_member:
            trailer = self._take_input(8)
            crc, size = struct.unpack("<II", trailer)
            if crc != self._crc & 0xFFFFFFFF:
                raise GzipError("CRC check failed")
            if size != self._size & 0xFFFFFFFF:
                raise GzipError("Incorrect length of data produced")
            self._raw_member = False
        while True:  # gzip files may be padded with zeroes (as the gzip module reads them)
            if not self._feed():
                self._eof = True
                return
            strm = self._strm
            rest = ctypes.string_at(strm.next_in, strm.avail_in)
            stripped = rest.lstrip(b"\0")
            strm.next_in += len(rest) - len(stripped)
            strm.avail_in = len(stripped)
            if stripped:
                break
        self._check(self._z.inflateReset2(self._ref, _GZIP_WBITS))

    def _take_input(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            if not self._feed():
                raise GzipError("Compressed file ended before the end-of-stream marker was reached")
            strm = self._strm
            step = min(n - len(got), strm.avail_in)
            got += ctypes.string_at(strm.next_in, step)
            strm.next_in += step
            strm.avail_in -= step
        return got

    def close(self) -> None:
        if not self.closed:
            if getattr(self, "_started", False):
                self._z.inflateEnd(self._ref)
                self._started = False
            self._raw.close()
        super().close()


def point_before(points: deque[AccessPoint], offset: int) -> AccessPoint | None:
    """The newest access point at or before decompressed ``offset``."""
    for point in reversed(points):
        if point.out <= offset:
            return point
    return None

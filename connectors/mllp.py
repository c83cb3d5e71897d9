"""MLLP framing (0x0B message 0x1C 0x0D) on asyncio streams, and a one-message-at-a-time client.

:class:`FrameReader` turns a byte stream into frames. It copes with frames split over many reads,
several frames in one read, bytes outside frames (skipped), a frame larger than ``max_bytes``
(reported as :class:`Oversized` once its end marker has been skipped to, so the connection stays
usable), and a new start block inside an unfinished frame (the unfinished one is reported as
:class:`Broken`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from router.errors import SamexError

SB = b"\x0b"
EB = b"\x1c"
CR = b"\r"
END = EB + CR
DEFAULT_MAX_BYTES = 1_000_000
CHUNK = 64 * 1024


class MllpError(SamexError):
    """An MLLP conversation failed (connection lost, no answer in time, not a framed answer)."""


class MllpTimeout(MllpError):
    """No answer within the timeout."""


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the limit; its bytes were skipped up to its end marker."""

    size: int
    head: bytes = b""  # the first bytes of the frame (to read MSH-10 for the answer)


@dataclass(frozen=True)
class Broken:
    """A frame that was interrupted by a new start block (its end marker is missing)."""

    head: bytes  # the first bytes of the broken frame (to read MSH for the answer)


Frame = bytes | Oversized | Broken


def frame(data: bytes) -> bytes:
    return SB + data + END


class FrameReader:
    def __init__(self, reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False  # a start block has been seen and the frame is not finished
        self._skipping = 0  # > 0: inside an oversized frame, bytes skipped so far
        self._scan = 0  # where the search for the end marker continues in _buf
        self._head = b""  # start of the oversized frame being skipped
        self.garbage = 0  # bytes seen outside frames

    def _next_from_buffer(self) -> Frame | None:
        buf = self._buf
        while True:
            if not self._in_frame:
                i = buf.find(SB)
                if i < 0:
                    self.garbage += len(buf)
                    buf.clear()
                    return None
                self.garbage += i
                del buf[: i + 1]
                self._in_frame, self._scan = True, 0
            if self._skipping:
                j = buf.find(END)
                k = buf.find(SB)
                if k >= 0 and (j < 0 or k < j):
                    size = self._skipping + k
                    del buf[:k]
                    self._skipping, self._in_frame = 0, False
                    return Oversized(size, self._head)
                if j < 0:
                    keep = 1 if buf.endswith(EB) else 0
                    self._skipping += len(buf) - keep
                    del buf[: len(buf) - keep]
                    return None
                size = self._skipping + j
                del buf[: j + 2]
                self._skipping, self._in_frame = 0, False
                return Oversized(size, self._head)
            start = max(0, self._scan - 1)
            j = buf.find(END, start)
            k = buf.find(SB, start)
            if k >= 0 and (j < 0 or k < j):
                head = bytes(buf[: min(k, 4096)])
                del buf[:k]
                self._in_frame = False
                return Broken(head)
            if j < 0:
                if len(buf) > self.max_bytes:
                    self._skipping = len(buf)
                    self._head = bytes(buf[:4096])
                    buf.clear()
                    continue
                self._scan = len(buf)
                return None
            if j > self.max_bytes:
                head = bytes(buf[:4096])
                del buf[: j + 2]
                self._in_frame = False
                return Oversized(j, head)
            data = bytes(buf[:j])
            del buf[: j + 2]
            self._in_frame, self._scan = False, 0
            return data

    async def read(self) -> Frame | None:
        """The next frame; ``None`` at end of stream (an unfinished frame at EOF is dropped)."""
        while True:
            got = self._next_from_buffer()
            if got is not None:
                return got
            chunk = await self.reader.read(CHUNK)
            if not chunk:
                return None
            self._buf += chunk

    def reset(self) -> int:
        """Drop an unfinished frame (e.g. one whose end marker never came); returns its size."""
        size = self.pending
        self._buf.clear()
        self._in_frame, self._skipping, self._scan = False, 0, 0
        return size

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame waiting for more input."""
        return len(self._buf) if self._in_frame else 0


class MllpClient:
    """Sends one message at a time and waits for its framed answer. Reconnects lazily; after a
    timeout or error the connection is closed (a late answer must never be read as the next one's)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 5.0,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.max_bytes = max_bytes
        self._reader: FrameReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}") from exc
        self._reader, self._writer = FrameReader(r, self.max_bytes), w

    async def request(self, data: bytes, timeout_s: float) -> bytes:
        """Send ``data`` framed and return the answer frame's bytes."""
        try:
            if self._writer is None or self._writer.is_closing():
                await self._connect()
            assert self._reader is not None and self._writer is not None
            self._writer.write(frame(data))
            await self._writer.drain()
            answer = await asyncio.wait_for(self._reader.read(), timeout_s)
        except TimeoutError:
            await self.close()
            raise MllpTimeout(f"no answer from {self.host}:{self.port} within {timeout_s:g} s") from None
        except OSError as exc:
            await self.close()
            raise MllpError(f"connection to {self.host}:{self.port} failed: {type(exc).__name__}") from exc
        if not isinstance(answer, bytes):
            await self.close()
            raise MllpError(f"{self.host}:{self.port} closed the connection or sent no framed answer")
        return answer

    async def close(self) -> None:
        w, self._writer, self._reader = self._writer, None, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)

"""The DATA stream (RFC 5321 4.5.2): find the end, undo dot-stuffing, refuse bare CR/LF.

Hand-written because it is the core of the SMTP daemon and no library streams
it: aiosmtpd collects the whole message in memory, line by line.  This works
on chunks with bytes methods (C speed, a few passes per chunk), so 100 MB of
empty lines costs the same as 100 MB of text, and memory is one chunk plus
four bytes.

Only CRLF.CRLF ends the data (no SMTP smuggling): a bare LF or CR anywhere
marks the message as bad, but the decoder still runs to the real end so the
session stays in step with the client.
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = b"\r\n"
END = b"\r\n.\r\n"


@dataclass
class Feed:
    data: bytes  # message bytes, dot-stuffing removed
    done: bool = False  # the terminating CRLF.CRLF was seen
    rest: bytes = b""  # bytes after the terminator (pipelined commands)


class DataDecoder:
    """Feed it what the socket gives; it returns message bytes as they become
    certain, and ``done`` with the pipelined remainder at the end."""

    def __init__(self) -> None:
        # The data starts at a line start: pretend a CRLF came before it,
        # so "\r\n." finds a dot on the first line too.  Those two bytes are
        # removed from the first output.
        self._carry = CRLF
        self._skip = 2
        self.bare_newline = False
        self.size = 0

    def feed(self, chunk: bytes) -> Feed:
        buf = self._carry + chunk
        end = buf.find(END)
        if end >= 0:
            self._carry = b""
            return Feed(self._emit(buf[: end + 2]), True, buf[end + 5 :])
        # Both patterns start with CR: keep an unfinished one (a final CR,
        # or a last CRLF with fewer than five bytes from it) for next time.
        cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        last = buf.rfind(CRLF)
        if last >= 0 and len(buf) - last < len(END):
            cut = last
        self._carry = buf[cut:]
        return Feed(self._emit(buf[:cut]))

    def _emit(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        crlf = piece.count(CRLF)
        if piece.count(b"\n") != crlf or piece.count(b"\r") != crlf:
            self.bare_newline = True
        if b"\r\n." in piece:
            piece = piece.replace(b"\r\n.", CRLF)
        if self._skip:
            piece, self._skip = piece[self._skip :], 0
        self.size += len(piece)
        return piece


class DataEncoder:
    """The sending side: a message's bytes as DATA wants them, chunk by chunk.

    Line ends become CRLF (a message received with BDAT may hold bare LF or
    CR), a dot at the start of a line is doubled, and ``finish`` ends the
    data with CRLF.CRLF.  A CR at the end of a chunk is held back until the
    next one shows whether an LF follows.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._bol = True  # the next byte starts a line

    def encode(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        if not data:
            return b""
        pairs = data.count(CRLF)
        if data.count(b"\r") != pairs or data.count(b"\n") != pairs:  # bare CR or LF somewhere
            data = data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)
        if self._bol and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._bol = data.endswith(b"\n")
        return data

    def finish(self) -> bytes:
        tail = self.encode(b"\n") if self._carry else b""  # a held CR ends its line
        return tail + (b"" if self._bol else CRLF) + b".\r\n"

"""ClamAV through clamd: refuse infected mail at the end of DATA (550 5.7.1).

The message is streamed to clamd with the ``zINSTREAM`` command, straight
from the spool file in chunks (a 4-byte big-endian length, the bytes, then a
zero length), so a 100 MB message never sits in memory here; clamd decodes
the MIME parts itself (its ``ScanMail``, on by default).  The protocol is
written out here on purpose: the Python clamd client libraries are
unmaintained.

Options (``[[filters]] name = "clamav"``, ``options = {...}``):

``socket`` (``"/run/clamav/clamd.ctl"``, Debian's ``LocalSocket``), or ``host`` and ``port`` (3310)
    where clamd listens.
``chunk`` (65536)
    bytes per INSTREAM chunk.
``max_size`` (105906176: the 100 MiB message limit plus 1 MiB for the headers mailstack adds)
    bytes; a larger message is not sent and the check fails.  clamd drops a
    stream longer than its own ``StreamMaxLength`` (25M in Debian's
    clamd.conf) and the check fails then too, so the operator must raise
    ``StreamMaxLength`` to at least the message limit (say ``StreamMaxLength
    110M``), or large mail is never delivered (with ``fail = "accept"``:
    never scanned).  Raise ``MaxScanSize`` and ``MaxFileSize`` with it:
    past those clamd stops scanning and answers OK.

A clamd that is down, refuses the stream or answers an error raises
``ClamdError``: the pipeline then applies the filter's ``fail`` choice, by
default ``tempfail`` (451 4.7.1, the sender retries: unscanned mail is not
delivered).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from . import Envelope, FilterError, Message, Verdict

DEFAULT_SOCKET = "/run/clamav/clamd.ctl"
DEFAULT_PORT = 3310
DEFAULT_CHUNK = 65536
DEFAULT_MAX_SIZE = 104857600 + (1 << 20)
_OPTIONS = {"socket", "host", "port", "chunk", "max_size"}
_NAME_MAX = 128  # characters of a virus name we repeat in a reply or a log line
_EXTENDED = re.compile(r"\([0-9a-f]{32,64}:\d+\)$")  # ExtendedDetectionInfo: "Name(md5:size)"


class ClamdError(Exception):
    """clamd could not be reached or did not give a verdict (one line, for the log)."""


def _int(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FilterError(f"{key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _printable(text: str, limit: int = _NAME_MAX) -> str:
    """What clamd said, safe on an SMTP reply line or in a log: printable ASCII, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]


def parse_reply(raw: bytes) -> Verdict:
    """clamd's answer to INSTREAM as a verdict; ClamdError for anything but OK or FOUND."""
    text = raw.rstrip(b"\0").decode("ascii", "replace").strip()
    if text == "stream: OK":
        return Verdict.accept()
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        found = _printable(text[len("stream: "):-len(" FOUND")].strip()) or "unknown"
        name = _EXTENDED.sub("", found) or found
        return Verdict.reject(f"550 5.7.1 Virus found: {name}", reason=found)
    raise ClamdError(f"clamd answered {_printable(text, 200)!r}")


class ClamAV:
    name = "clamav"
    default_fail = "tempfail"

    def __init__(self, options: dict[str, Any]):
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise FilterError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}")
        self.socket: str | None = None
        self.host: str | None = None
        if "host" in options:
            if "socket" in options:
                raise FilterError("give either socket or host/port, not both")
            host = options["host"]
            if not isinstance(host, str) or not host or any(c.isspace() for c in host):
                raise FilterError(f"host must be a host name or IP address, not {host!r}")
            self.host = host
        elif "port" in options:
            raise FilterError("port needs host (or give socket for a Unix socket)")
        else:
            path = options.get("socket", DEFAULT_SOCKET)
            if not isinstance(path, str) or not path.startswith("/"):
                raise FilterError(f"socket must be an absolute path to clamd's Unix socket, not {path!r}")
            if len(path.encode()) > 107:  # sun_path is 108 bytes with its NUL
                raise FilterError(f"socket path is too long for a Unix socket (over 107 bytes): {path!r}")
            self.socket = path
        self.port = _int(options, "port", DEFAULT_PORT, 1, 65535)
        self.chunk = _int(options, "chunk", DEFAULT_CHUNK, 1024, 1 << 24)
        self.max_size = _int(options, "max_size", DEFAULT_MAX_SIZE, 1, (1 << 32) - 1)
        self.where = self.socket or f"{self.host}:{self.port}"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.socket:
                return await asyncio.open_unix_connection(self.socket)
            return await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise ClamdError(f"clamd at {self.where}: cannot connect: {e.strerror or e}") from e

    async def _reply(self, reader: asyncio.StreamReader) -> bytes:
        """One NUL-terminated answer (the "z" command form)."""
        try:
            return await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                return e.partial
            raise ClamdError(f"clamd at {self.where} closed the connection without an answer") from None
        except asyncio.LimitOverrunError:
            raise ClamdError(f"clamd at {self.where} answered an overlong line") from None
        except OSError as e:
            raise ClamdError(f"clamd at {self.where}: connection lost: {e.strerror or e}") from e

    async def ping(self, timeout: float = 5.0) -> None:
        """Raise ClamdError unless clamd answers PONG (for ``mailstack check`` and tests)."""

        async def exchange() -> bytes:
            reader, writer = await self._connect()
            try:
                writer.write(b"zPING\0")
                await writer.drain()
                return await self._reply(reader)
            finally:
                writer.transport.abort()

        try:
            answer = await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise ClamdError(f"clamd at {self.where} did not answer PING within {timeout:g} s") from None
        except OSError as e:
            raise ClamdError(f"clamd at {self.where}: {e.strerror or e}") from e
        if answer.rstrip(b"\0").strip() != b"PONG":
            raise ClamdError(f"clamd at {self.where} answered PING with {_printable(answer.decode('ascii', 'replace'), 200)!r}")

    async def check(self, message: Message, envelope: Envelope) -> Verdict:
        if message.size > self.max_size:
            raise ClamdError(f"not scanned: {message.size} bytes > max_size ({self.max_size})")
        reader, writer = await self._connect()
        # The answer is read while the message is still being sent: clamd answers
        # early (and closes) when it refuses the stream, e.g. past StreamMaxLength,
        # and asyncio drops what was read once a write fails on the closed socket.
        answer = asyncio.ensure_future(self._reply(reader))
        try:
            try:
                writer.write(b"zINSTREAM\0")
                await self._send(message, writer, answer)
            except OSError as e:
                await asyncio.wait({answer}, timeout=1.0)
                if not answer.done() or answer.exception() is not None:
                    raise ClamdError(f"clamd at {self.where}: connection lost while sending the message: {e.strerror or e}") from e
            raw = await answer
        finally:
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # retrieved: no "exception never retrieved" noise
            writer.transport.abort()  # nothing is left to send; never wait on a stuck peer
        try:
            return parse_reply(raw)
        except ClamdError as e:
            raise ClamdError(f"clamd at {self.where}: {e}") from None

    async def _send(self, message: Message, writer: asyncio.StreamWriter, answer: asyncio.Future) -> None:
        """The spool file in INSTREAM chunks, then the zero-length end mark.

        Plain blocking reads: the spool file was just written, so it is in the
        page cache and a 64 KiB read costs microseconds.  ``drain()`` after each
        chunk keeps at most about one chunk queued in the transport."""
        sent = 0
        with message.open() as f:
            while chunk := f.read(self.chunk):
                if answer.done():  # clamd answered before the end: an error, read below
                    return
                sent += len(chunk)
                if sent > self.max_size:
                    raise ClamdError(f"not scanned: the message grew past max_size ({self.max_size})")
                writer.write(len(chunk).to_bytes(4, "big"))
                writer.write(chunk)
                await writer.drain()
        writer.write(b"\0\0\0\0")
        await writer.drain()


async def ping(socket: str | None = None, host: str | None = None, port: int = DEFAULT_PORT, timeout: float = 5.0) -> None:
    """Raise ClamdError unless the clamd at ``socket`` (or ``host``:``port``) answers PING."""
    options: dict[str, Any] = {"host": host, "port": port} if host else {"socket": socket or DEFAULT_SOCKET}
    await ClamAV(options).ping(timeout)


__all__ = ["ClamAV", "ClamdError", "DEFAULT_MAX_SIZE", "parse_reply", "ping"]

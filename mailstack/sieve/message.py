"""What the interpreter may see of a message (``MessageView``), and one built
from a header block and a body reader (``Message``) for delivery to use.

``Message`` keeps the header block only.  The body is opened the first time
a ``body`` test runs, and at most ``max_body`` bytes of it are read: a
100 MB message costs nothing to a header-only script, and a bounded prefix to
a body test.  MIME structure comes from the store's streaming parser, which
is hardened against hostile nesting and never raises on bad input.
"""

from __future__ import annotations

import binascii
import codecs
import io
import os
import re
from typing import BinaryIO, Callable, Protocol, Sequence

from ..store.mime import Part, decode_header, parse_message

MAX_HEADER = 256 * 1024    # bytes of header block kept; the rest counts as body
MAX_FIELDS = 5000          # header fields kept
MAX_BODY = 1024 * 1024     # bytes of body a body test may read
MAX_PARTS = 1000           # MIME parts a body test looks at
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


class MessageView(Protocol):
    """The message as the interpreter sees it.  Header names are case-insensitive."""

    @property
    def envelope_from(self) -> str:
        """MAIL FROM address; "" for the null sender <>."""

    @property
    def envelope_to(self) -> str:
        """The RCPT TO address this delivery is for."""

    @property
    def size(self) -> int:
        """Size of the whole message in bytes."""

    def header(self, name: str) -> Sequence[str]:
        """Values of every field of that name, in order: unfolded, trimmed, RFC 2047 decoded."""

    def raw_header(self, name: str) -> Sequence[str]:
        """The same values unfolded and trimmed but not decoded (for addresses and dates)."""

    def body(self, transform: str, content_types: Sequence[str]) -> Sequence[str]:
        """Body texts for RFC 5173: transform "raw" (one undecoded text), "text"
        (decoded text/* parts) or "content" (decoded parts of the given types)."""

    def mailbox_exists(self, name: str) -> bool:
        """RFC 5490 mailboxexists: does the user have this mailbox?"""


class Message:
    """A MessageView over a header block and a lazily opened body."""

    def __init__(self, header_block: bytes, body: Callable[[], BinaryIO] | None = None, *,
                 envelope_from: str = "", envelope_to: str = "", size: int | None = None,
                 mailboxes: Callable[[str], bool] | None = None, max_body: int = MAX_BODY) -> None:
        """``body`` opens a stream positioned at the first byte of the body;
        ``mailboxes`` answers mailboxexists (no mailbox exists without it)."""
        self._block = bytes(header_block[:MAX_HEADER])
        self._open_body = body
        self._mailboxes = mailboxes
        self._max_body = max_body
        self.envelope_from = envelope_from
        self.envelope_to = envelope_to
        self.size = len(self._block) if size is None else size
        self._raw: dict[str, list[str]] = {}
        self._decoded: dict[str, list[str]] = {}
        self._body_bytes: bytes | None = None
        self._parts: list[tuple[str, bytes, str]] | None = None   # (type/subtype, body bytes, charset)
        self._fields(self._block)

    # -- constructors ------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, **kw: object) -> "Message":
        """A message held in memory (tests, small generated messages)."""
        end = header_end(data)
        return cls(data[:end], lambda: io.BytesIO(data[end:]), size=len(data), **kw)  # type: ignore[arg-type]

    @classmethod
    def from_stream(cls, opener: Callable[[], BinaryIO], *, size: int | None = None, **kw: object) -> "Message":
        """A message read through ``opener`` (a fresh stream at offset 0 on each
        call): once now for the header block, once more only if a body test runs."""
        with opener() as f:
            block = _read_header(f)
        offset = len(block)

        def body() -> BinaryIO:
            f = opener()
            f.seek(offset)
            return f

        return cls(block, body, size=size, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kw: object) -> "Message":
        """A message in a file (a spool file, a Maildir message)."""
        return cls.from_stream(lambda: open(path, "rb"), size=os.path.getsize(path), **kw)  # type: ignore[arg-type]

    # -- headers --------------------------------------------------------------------

    def _fields(self, block: bytes) -> None:
        name: str | None = None
        value = bytearray()
        count = 0
        for line in block.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if line[:1] in (b" ", b"\t") and name is not None:
                value += line          # unfolding removes only the line break (RFC 5322 §2.2.3)
                continue
            if name is not None:
                self._raw.setdefault(name, []).append(value.decode("utf-8", "surrogateescape").strip(" \t"))
                name = None
            if not line or count >= MAX_FIELDS:
                break
            m = _FIELD.match(line)
            if m is None:              # not a field: ignored, as by Dovecot
                continue
            name, value = m.group(1).decode("ascii").lower(), bytearray(line[m.end():])
            count += 1
        if name is not None:
            self._raw.setdefault(name, []).append(value.decode("utf-8", "surrogateescape").strip(" \t"))

    def raw_header(self, name: str) -> Sequence[str]:
        return [_clean(v) for v in self._raw.get(name.lower(), ())]

    def header(self, name: str) -> Sequence[str]:
        key = name.lower()
        if key not in self._decoded:
            self._decoded[key] = [decode_header(v) for v in self._raw.get(key, ())]
        return self._decoded[key]

    def mailbox_exists(self, name: str) -> bool:
        return self._mailboxes is not None and self._mailboxes(name)

    # -- body -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self._body_bytes is None:
            self._body_bytes = b""
            if self._open_body is not None:
                with self._open_body() as f:
                    self._body_bytes = _read_at_most(f, self._max_body)
        return self._body_bytes

    def body(self, transform: str, content_types: Sequence[str]) -> Sequence[str]:
        if transform == "raw":
            return [self._read_body().decode("utf-8", "replace")]
        if transform == "text":
            content_types = ("text",)
        out = []
        for ctype, data, charset in self._mime_parts():
            if any(_type_matches(ctype, want) for want in content_types):
                out.append(_decode_text(data, charset))
        return out

    def _mime_parts(self) -> list[tuple[str, bytes, str]]:
        """Leaf parts (and the headers of enclosed messages) with decoded bodies."""
        if self._parts is not None:
            return self._parts
        block = self._block
        if not block.endswith(b"\n\n") and not block.endswith(b"\n\r\n"):
            block = block.rstrip(b"\r\n") + b"\r\n\r\n"
        data = block + self._read_body()
        root = parse_message(io.BytesIO(data)).root
        parts: list[tuple[str, bytes, str]] = []
        stack: list[Part] = [root]
        while stack and len(parts) < MAX_PARTS:
            p = stack.pop()
            ctype = f"{p.maintype}/{p.subtype}"
            if p.maintype == "multipart":
                stack.extend(reversed(p.children))
            elif p.children:            # message/rfc822: its header, then its parts
                inner = p.children[0]
                parts.append((ctype, data[inner.header_offset:inner.body_offset], "utf-8"))
                stack.append(inner)
            else:
                charset = next((v for k, v in p.params if k == "charset"), "utf-8")
                parts.append((ctype, _transfer_decode(data[p.body_offset:p.end_offset], p.encoding), charset))
        self._parts = parts
        return parts


def header_end(data: bytes) -> int:
    """Offset of the body: after the first empty line (or the end)."""
    if data.startswith(b"\r\n"):
        return 2
    if data.startswith(b"\n"):
        return 1
    m = re.search(rb"\n\r?\n", data)
    return len(data) if m is None else m.end()


def _read_header(f: BinaryIO) -> bytes:
    """The header block and its empty line, at most MAX_HEADER bytes."""
    out = bytearray()
    while len(out) < MAX_HEADER:
        line = f.readline(MAX_HEADER - len(out))
        out += line
        if not line or line in (b"\n", b"\r\n"):
            break
    return bytes(out)


def _read_at_most(f: BinaryIO, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = f.read(min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _clean(value: str) -> str:
    """Raw header text without the surrogates that stand for invalid UTF-8."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _type_matches(ctype: str, want: str) -> bool:
    """RFC 5173 §5.2: "type" matches all its subtypes, "type/subtype" one,
    "" everything; a type with a leading, trailing or second slash nothing."""
    want = want.lower()
    if want == "":
        return True
    if want.startswith("/") or want.endswith("/") or want.count("/") > 1:
        return False
    return ctype == want if "/" in want else ctype.split("/", 1)[0] == want


def _transfer_decode(data: bytes, encoding: str) -> bytes:
    if encoding == "BASE64":
        compact = b"".join(data.split())
        try:
            return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))
        except binascii.Error:
            pass
        out = bytearray()
        for line in data.split(b"\n"):   # damaged: decode line by line, a bad line costs only itself
            line = line.strip()
            try:
                out += binascii.a2b_base64(line + b"=" * (-len(line) % 4))
            except binascii.Error:
                continue
        return bytes(out)
    if encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(data)
    return data


def _decode_text(data: bytes, charset: str) -> str:
    try:
        info = codecs.lookup(charset.strip() or "utf-8")
        if getattr(info, "_is_text_encoding", True):
            if info.name == "ascii":   # us-ascii labels often hide UTF-8 or Latin-1
                info = codecs.lookup("utf-8")
            return data.decode(info.name, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        pass
    return data.decode("utf-8", "replace")

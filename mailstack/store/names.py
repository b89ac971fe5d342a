"""Folder names: validation, IMAP modified UTF-7, and Maildir++ directory names.

Folder names in the store API are Unicode strings with "/" as the hierarchy
separator ("Archives/2026"); INBOX is the Maildir root.  On disk a folder is
a Maildir++ directory: "." + the name with "/" turned into "." and encoded in
modified UTF-7 (RFC 3501 5.1.3), exactly as Dovecot writes it.  Since "." is
the on-disk separator, a folder name cannot contain it.

The codec is hand-written (30 lines) because it is part of the on-disk
format, the core of the store; tests check it against Twisted's codec.
"""

from __future__ import annotations

import base64
import re

SEPARATOR = "/"
INBOX = "INBOX"
MAX_NAME_BYTES = 240  # the on-disk directory name must fit NAME_MAX (255)
MAX_DEPTH = 16


class FolderNameError(ValueError):
    """A folder name that cannot be stored; the message says why."""


def _b64(chunk: str) -> str:
    raw = chunk.encode("utf-16-be")
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode_mutf7(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.append("&" + _b64("".join(pending)) + "-")
            pending.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            pending.append(c)
    flush()
    return "".join(out)


_SHIFT = re.compile(r"&([A-Za-z0-9+,]*)-")


def decode_mutf7(text: str) -> str:
    """Decode modified UTF-7; raise FolderNameError on malformed input."""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in text):
        raise FolderNameError(f"not modified UTF-7: {text!r}")

    def sub(m: re.Match) -> str:
        b = m.group(1)
        if not b:
            return "&"
        b = b.replace(",", "/")
        b += "=" * (-len(b) % 4)
        try:
            s = base64.b64decode(b, validate=True).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            raise FolderNameError(f"bad modified UTF-7 in {text!r}") from None
        return s

    rest = _SHIFT.sub("", text)
    if "&" in rest:
        raise FolderNameError(f"unterminated '&' in {text!r}")
    return _SHIFT.sub(sub, text)


def normalize(name: str) -> str:
    """Validate a folder name; INBOX (any case) becomes "INBOX"."""
    if not isinstance(name, str) or not name:
        raise FolderNameError("a folder name cannot be empty")
    parts = name.split(SEPARATOR)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    for p in parts:
        if not p:
            raise FolderNameError(f"{name!r}: empty level (leading, trailing or double '/')")
        if "." in p:
            raise FolderNameError(f"{name!r}: '.' is not allowed in folder names")
        if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in p):
            raise FolderNameError(f"{name!r}: control characters are not allowed")
        if any(c in p for c in "*%\\"):
            raise FolderNameError(f"{name!r}: '*', '%' and '\\' are not allowed")
        if p != p.strip():
            raise FolderNameError(f"{name!r}: a level cannot start or end with a space")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in p):
            raise FolderNameError(f"{name!r}: invalid Unicode")
    if len(parts) > MAX_DEPTH:
        raise FolderNameError(f"{name!r}: more than {MAX_DEPTH} levels")
    normalized = SEPARATOR.join(parts)
    if normalized != INBOX and len(dir_name(normalized).encode()) > MAX_NAME_BYTES:
        raise FolderNameError(f"{name!r}: name too long")
    return normalized


def dir_name(name: str) -> str:
    """The Maildir++ directory of a (normalized) folder; "" for INBOX."""
    if name == INBOX:
        return ""
    return "." + ".".join(encode_mutf7(p) for p in name.split(SEPARATOR))


def from_dir_name(d: str) -> str | None:
    """The folder name of a Maildir++ directory, or None if it is not one."""
    if not d.startswith(".") or d in (".", "..") or len(d) < 2:
        return None
    try:
        name = SEPARATOR.join(decode_mutf7(p) for p in d[1:].split("."))
        return normalize(name)
    except FolderNameError:
        return None


def parent(name: str) -> str | None:
    return name.rsplit(SEPARATOR, 1)[0] if SEPARATOR in name else None

"""The DATA decoder against a line-by-line reference, under every chunking."""

from __future__ import annotations

import random

import pytest

from mailstack.smtp.dotdata import DataDecoder


def reference(stream: bytes) -> tuple[bytes, bool, bytes]:
    """RFC 5321 4.5.2 read literally: lines end with CRLF, '.' alone ends."""
    out, bare, pos = [], False, 0
    while True:
        nl = stream.find(b"\r\n", pos)
        assert nl >= 0, "no terminator"
        line = stream[pos:nl]
        pos = nl + 2
        if line == b".":
            return b"".join(out), bare, stream[pos:]
        if b"\r" in line or b"\n" in line:
            bare = True
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


def decode(stream: bytes, sizes: list[int]) -> tuple[bytes, bool, bytes]:
    d, out, pos, i = DataDecoder(), [], 0, 0
    while True:
        n = sizes[i % len(sizes)]
        i += 1
        chunk = stream[pos : pos + n]
        pos += n
        f = d.feed(chunk)
        out.append(f.data)
        if f.done:
            assert d.size == len(b"".join(out))
            return b"".join(out), d.bare_newline, f.rest + stream[pos:]
        assert chunk, "ran out of input before the terminator"


CASES = [
    b".\r\n",
    b"\r\n.\r\n",
    b"a\r\n.\r\n",
    b"..\r\n.\r\n",
    b".x\r\n..y\r\n...\r\n.\r\nMAIL FROM:<a@b>\r\n",
    b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    b"line\n.\nSMUGGLED\r\n.\r\n",  # "\n.\n": not an end, bare LF
    b"line\r\n.\nSMUGGLED\r\n.\r\n",  # "\r\n.\n"
    b"line\n.\r\nSMUGGLED\r\n.\r\n",  # "\n.\r\n"
    b"line\r.\rx\r\n.\r\n",  # bare CR
    b"a\r\r\n.\r\n",
    b"x" * 5000 + b"\r\n.\r\n",
    b"\r\n" * 3000 + b".\r\n",
]


@pytest.mark.parametrize("stream", CASES)
def test_matches_reference_for_every_split(stream: bytes) -> None:
    want = reference(stream)
    for n in (1, 2, 3, 4, 5, 7, 64, 10_000):
        assert decode(stream, [n]) == want, n


def test_random_streams_and_chunkings() -> None:
    rnd = random.Random(5321)
    alphabet = [b"\r\n", b".", b"..", b"a", b"\r", b"\n", b"\r\n.", b"xyz"]
    for _ in range(3000):
        body = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
        stream = body + b"\r\n.\r\n" + b"NEXT\r\n"
        want = reference(stream)
        sizes = [rnd.randint(1, 9) for _ in range(5)]
        assert decode(stream, sizes) == want, (stream, sizes)


def test_smuggling_patterns_end_only_at_crlf_dot_crlf() -> None:
    for smuggle in (b"\n.\n", b"\r\n.\n", b"\n.\r\n"):
        stream = b"Subject: a\r\n\r\nx" + smuggle + b"MAIL FROM:<evil@x>\r\n.\r\n"
        data, bare, rest = decode(stream, [4096])
        assert bare and rest == b""
        assert b"MAIL FROM:<evil@x>" in data

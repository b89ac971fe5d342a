"""SMTP line-level pieces without sockets: paths and reply codes."""

from __future__ import annotations

import pytest

from mailstack.smtp.address import parse_path
from mailstack.smtp.replies import enhance


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("<jean.dupont@ac-normandie.fr>", ("jean.dupont@ac-normandie.fr", "")),
        ("<a@b.fr> SIZE=10 BODY=8BITMIME", ("a@b.fr", "SIZE=10 BODY=8BITMIME")),
        ("<>", ("<>", "")),
        ("<> SIZE=5", ("<>", "SIZE=5")),
        ("a@b.fr", ("a@b.fr", "")),
        ("a@b.fr SMTPUTF8", ("a@b.fr", "SMTPUTF8")),
        ("<@relay.example,@other.example:a@b.fr>", ("a@b.fr", "")),  # source route dropped
        ('<"jean dupont"@b.fr>', ('"jean dupont"@b.fr', "")),
        ("<a@[192.0.2.1]>", ("a@[192.0.2.1]", "")),
        ("<postmaster>", ("postmaster", "")),
        ("<éloïse.dupré@ac-normandie.fr>", ("éloïse.dupré@ac-normandie.fr", "")),
        ("", ("", "")),
        ("<<<>>>", (None, None)),
        ("<a b@c.fr>", (None, None)),
        ("<a@b.fr", (None, None)),
        ("a@b.fr>", (None, None)),
        ("<a@b@c.fr>", (None, None)),
        ("<" + "a" * 250 + "@b.fr>", (None, None)),
        ("<a@b.fr>\r\nRCPT TO:<x@y>", (None, None)),
    ],
)
def test_parse_path(arg: str, want: tuple) -> None:
    assert parse_path(arg) == want


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("503 Error: need RCPT command", "503 5.5.1 need RCPT command"),
        ("552 Error: message size exceeds fixed maximum message size", "552 5.3.4 message size exceeds fixed maximum message size"),
        ("500 Error: bad syntax", "500 5.5.2 bad syntax"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("220 mail.example ESMTP", "220 mail.example ESMTP"),  # greeting
        ("354 End data", "354 End data"),  # intermediate
        ("250-PIPELINING", "250-PIPELINING"),  # EHLO continuation
        ("599 odd", "599 5.0.0 odd"),
    ],
)
def test_every_reply_gets_an_enhanced_code(line: str, want: str) -> None:
    assert enhance(line) == want

"""The IMAP command reader and grammar, without sockets: exact values and fuzzing."""

from __future__ import annotations

import random

import pytest

from mailstack.imap import parser as p


def feed_all(reader: p.Reader, data: bytes, decide=None) -> list:
    """Feed byte by byte (the worst split), deciding literals with ``decide``."""
    events = []
    for i in range(len(data)):
        for ev in reader.feed(data[i : i + 1]):
            events.append(ev)
            if isinstance(ev, p.LiteralPending):
                (decide or (lambda r, e: r.buffer()))(reader, ev)
                events += reader.resume()
    return events


def test_lines_and_buffered_literals_split_anywhere() -> None:
    data = b'a1 LOGIN {5}\r\nhello "pa\\"ss"\r\na2 NOOP\r\n'
    events = feed_all(p.Reader(), data)
    lines = [e for e in events if isinstance(e, p.CommandLine)]
    assert [p.parse_command(l).args for l in lines] == [[b"hello", b'pa"ss'], []]
    assert isinstance(events[0], p.LiteralPending) and events[0].synchronizing and events[0].size == 5


def test_streamed_literal_comes_out_in_chunks() -> None:
    r = p.Reader()
    events = r.feed(b"a APPEND INBOX (\\Seen) {11+}\r\nHello")
    assert isinstance(events[-1], p.LiteralPending) and not events[-1].synchronizing
    assert p.tokenize([events[-1].prefix]) == ["a", "APPEND", "INBOX", ["\\Seen"]]
    r.stream()
    out = r.resume() + r.feed(b" World\r\nb NOOP\r\n")
    assert b"".join(e.data for e in out if isinstance(e, p.LiteralData)) == b"Hello World"
    assert isinstance(out[-3], p.LiteralEnd) or any(isinstance(e, p.LiteralEnd) for e in out)
    cmds = [p.parse_command(e) for e in out if isinstance(e, p.CommandLine)]
    assert [c.name for c in cmds] == ["APPEND", "NOOP"]
    assert isinstance(cmds[0].args[-1], p.Literal) and cmds[0].args[-1].size == 11


def test_refused_literals() -> None:
    r = p.Reader()
    ev = r.feed(b"a APPEND INBOX {999999999}\r\n")[-1]
    r.refuse()  # synchronizing: the client sends nothing more for it
    assert [p.parse_command(e).name for e in r.feed(b"b NOOP\r\n")] == ["NOOP"]
    ev = r.feed(b"c APPEND INBOX {10+}\r\n")[-1]
    assert not ev.synchronizing
    r.refuse()  # non-synchronizing: the 10 bytes come anyway and are thrown away
    out = r.feed(b"0123456789\r\nd NOOP\r\n")
    assert [p.parse_command(e).name for e in out if isinstance(e, p.CommandLine)] == ["NOOP"]


def test_line_too_long_then_recovers() -> None:
    r = p.Reader(max_line=100)
    out = r.feed(b"a " + b"x" * 200)
    assert isinstance(out[0], p.LineTooLong) and out[0].tag == b"a"
    out = r.feed(b"yyy\r\nb NOOP\r\n")
    assert [p.parse_command(e).tag for e in out if isinstance(e, p.CommandLine)] == ["b"]


@pytest.mark.parametrize(
    "line,name,args",
    [
        (b"A1 uid fetch 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>)", "UID FETCH",
         ["1:*", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>"]]),
        (b'a SEARCH CHARSET UTF-8 SUBJECT "r\xc3\xa9union" NOT SEEN', "SEARCH",
         ["CHARSET", "UTF-8", "SUBJECT", "réunion".encode(), "NOT", "SEEN"]),
        (b"a STORE 1,3:5 +FLAGS.SILENT (\\Seen $Label1)", "STORE", ["1,3:5", "+FLAGS.SILENT", ["\\Seen", "$Label1"]]),
        (b'a LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))', "LIST",
         [["SUBSCRIBED"], b"", b"*", "RETURN", ["STATUS", ["MESSAGES"]]]),
        (b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41:211,214:541))", "SELECT",
         ["INBOX", ["QRESYNC", ["67890007", "20050715194045000", "41:211,214:541"]]]),
    ],
)
def test_commands(line: bytes, name: str, args: list) -> None:
    c = p.parse_command(p.CommandLine([line + b"\r\n"]))
    assert (c.name, c.args) == (name, args)


@pytest.mark.parametrize(
    "line", [b"", b"a", b"* NOOP", b"+ NOOP", b"a (NOOP", b"a NOOP)", b'a LOGIN "x', b"a FETCH 1 BODY[1"]
)
def test_malformed_commands(line: bytes) -> None:
    with pytest.raises(p.ParseError):
        p.parse_command(p.CommandLine([line + b"\r\n"]))


def test_sequence_sets_and_fetch_items() -> None:
    assert p.sequence_set(p.Atom("1:3,7,*:9"), 12) == [(1, 3), (7, 7), (9, 12)]
    assert p.sequence_set(p.Atom("1:4294967295"), 5) == [(1, 4294967295)]
    for bad in ("0", "1:0", "a", "1,,2", "4294967296", ""):
        with pytest.raises(p.ParseError):
            p.sequence_set(p.Atom(bad), 5)
    items = p.fetch_attrs([p.Atom(x) for x in ("BODY.PEEK[1.2.MIME]", "RFC822.SIZE", "BODY[HEADER.FIELDS.NOT (X-A)]", "BODY[]<5.10>")])
    assert [(a.name, a.section, a.peek, a.partial, a.fields) for a in items] == [
        ("BODY", "1.2.MIME", True, None, ()),
        ("RFC822.SIZE", "", False, None, ()),
        ("BODY", "HEADER.FIELDS.NOT", False, None, ("X-A",)),
        ("BODY", "", False, (5, 10), ()),
    ]
    assert [a.name for a in p.fetch_attrs(p.Atom("FAST"))] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    for bad in (["BODY[MIME]"], ["BODY[HEADER.FIELDS]"], ["NOPE"], ["BINARY[1.HEADER]"], ["BODY[]<1"], [b"FLAGS"], []):
        with pytest.raises(p.ParseError):
            p.fetch_attrs([p.Atom(x) if isinstance(x, str) else x for x in bad])


def test_fuzz_reader_and_grammar_never_crash() -> None:
    """Random mutations of real client traffic: only ParseError, never another exception."""
    rng = random.Random(20261125)
    corpus = [
        b'a1 LOGIN "anne.martin" "secret"\r\n',
        b"a2 SELECT INBOX (CONDSTORE)\r\n",
        b"a3 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.1024>) (CHANGEDSINCE 12345)\r\n",
        b"a4 APPEND Sent (\\Seen) \"25-Nov-2026 10:00:00 +0100\" {12+}\r\nSubject: x\r\n\r\n",
        b"a5 UID SEARCH RETURN (MIN COUNT) OR FROM anne (SUBJECT {3}\r\nabc) NOT DELETED\r\n",
        b"a6 UID STORE 1:5 (UNCHANGEDSINCE 99) -FLAGS ($Junk)\r\n",
        b"a7 LIST (SPECIAL-USE) \"\" \"%\" RETURN (CHILDREN STATUS (UNSEEN))\r\n",
    ]
    for _ in range(3000):
        data = bytearray(rng.choice(corpus) + rng.choice(corpus))
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[min(pos, len(data) - 1)]
            elif op == 1:
                data[pos:pos] = bytes([rng.choice(b'(){}[]<>"\\ \r\n*%~+0123456789\x00\xff')])
            elif op == 2 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            else:
                data[pos:pos] = b"{%d}\r\n" % rng.randrange(0, 70000)
        r = p.Reader(max_line=4096)
        step = rng.randrange(1, 40)
        for i in range(0, len(data), step):
            for ev in r.feed(bytes(data[i : i + step])):
                if isinstance(ev, p.LiteralPending):
                    choice = rng.randrange(3)
                    if choice == 0 and ev.size <= r.max_buffered_literal:
                        r.buffer()
                    elif choice == 1:
                        r.stream()
                    else:
                        r.refuse()
                    r.resume()
                elif isinstance(ev, p.CommandLine):
                    try:
                        c = p.parse_command(ev)
                        if c.name.endswith("FETCH") and len(c.args) > 1:
                            p.fetch_attrs(c.args[1])
                        if c.args and isinstance(c.args[0], p.Atom):
                            p.sequence_set(c.args[0], 100)
                    except p.ParseError:
                        pass

"""SORT and THREAD without I/O: RFC 5256 (SORT, THREAD=ORDEREDSUBJECT,
THREAD=REFERENCES) and RFC 5957 (SORT=DISPLAY).

The session searches, builds one :class:`SortItem` per matching message from
the index (raw header values, as the store keeps them) and calls
:func:`sort` or a ``thread_*`` function; :func:`format_threads` writes the
THREAD response body.  Everything is plain data in, plain data out, and
nothing may hang or raise on hostile headers: reference loops, duplicate
Message-IDs and unparseable dates are what real mailboxes contain.

Deep threads (a notification that replies to itself every day for years)
must not hit Python's recursion limit: tree walks here use explicit stacks.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from email.utils import mktime_tz, parsedate_tz
from typing import Callable, Iterable

from ..store import mime

__all__ = [
    "SortItem", "Node", "SORT_KEYS", "base_subject", "is_reply_or_forward", "sent_date",
    "sort", "thread_orderedsubject", "thread_references", "format_threads",
]

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")


@dataclass
class SortItem:
    """One message to sort or thread.  Header values are raw, as the index keeps
    them (RFC 2047 words undecoded, 8-bit bytes as surrogates)."""
    uid: int
    seq: int
    arrival: float                      # INTERNALDATE, seconds since the epoch
    size: int                           # RFC822.SIZE
    date: str | None = None             # Date header
    subject: str | None = None
    from_: list[mime.Address] = field(default_factory=list)
    to: list[mime.Address] = field(default_factory=list)
    cc: list[mime.Address] = field(default_factory=list)
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None


@dataclass
class Node:
    """A thread tree node; `item` is None for a dummy (a message referenced
    but not in the set), which RFC 5256 keeps only at the top level."""
    item: SortItem | None
    children: list[Node] = field(default_factory=list)


# --- base subject (RFC 5256 2.1) -------------------------------------------------------

# RFC 5256 knows "re", "fw" and "fwd".  Extension (not in the RFC): the prefixes
# that localized Outlook and Thunderbird put in our users' mail, French first
# ("TR :" is Outlook's forward, "Réf. :" and "Rép. :" older clients), then those
# of the colleagues abroad they correspond with (German AW/WG, Nordic SV/VS,
# Spanish RV, Portuguese ENC, Dutch Antw).  An optional "." may follow them.
_EXTRA_PREFIXES = r"tr|r[ée]f\.?|r[ée]p\.?|aw|wg|sv|vs|rv|enc|antw\.?"
_BLOB = r"\[[^\[\]]*\] *"
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?|{_EXTRA_PREFIXES}) *(?:{_BLOB})?:| ", re.I)
_BLOB_RE = re.compile(_BLOB)
# Step 1: RFC 5256 turns tabs and continuations into spaces; as an extension,
# every Unicode space (French typography puts a no-break space before ":").
_SPACES = re.compile(r"\s+")


def _extract(subject: str) -> tuple[str, bool]:
    """Base subject and whether extraction removed a reply/forward marker."""
    s = _SPACES.sub(" ", unicodedata.normalize("NFC", subject))
    refwd = False
    while True:
        while True:                                     # (2) trailers: "(fwd)" and WSP
            before = s
            s = s.rstrip(" ")
            if s[-5:].lower() == "(fwd)":
                s, refwd = s[:-5], True
            if s == before:
                break
        while True:                                     # (3)-(5) leaders and blobs
            before = s
            if (m := _LEADER.match(s)) is not None:
                refwd = refwd or m.group() != " "
                s = s[m.end():]
            if (m := _BLOB_RE.match(s)) is not None and m.end() < len(s):
                s = s[m.end():]
            if s == before:
                break
        if s[:5].lower() == "[fwd:" and s.endswith("]"):  # (6) "[fwd: ...]"
            s, refwd = s[5:-1], True
            continue
        return s, refwd


def base_subject(subject: str) -> str:
    """RFC 5256 2.1 base subject of an already RFC 2047-decoded subject (use
    ``mime.decode_header`` on raw values), so that replies, forwards and list
    tags sort and thread with the original; case is kept (compare with casefold)."""
    return _extract(subject)[0]


def is_reply_or_forward(subject: str) -> bool:
    """Whether base subject extraction removed a "Re:", "Fwd:", "(fwd)" or "[fwd: ]"
    (REFERENCES step 5 prefers an original over a reply as a thread's head)."""
    return _extract(subject)[1]


# --- sort keys -----------------------------------------------------------------------


def _casemap(s: str) -> str:
    """Close to i;unicode-casemap (RFC 5051): case-folded, compatibility-decomposed."""
    return unicodedata.normalize("NFKD", s.casefold())


def sent_date(item: SortItem) -> float:
    """RFC 5256 2.2 sent date in UTC seconds: the Date header, or the arrival
    time when it is missing or cannot be parsed."""
    if item.date:
        try:
            parsed = parsedate_tz(mime.decode_header(item.date))
            if parsed is not None:   # no zone: UTC, not the server's local time
                return float(mktime_tz(parsed if parsed[9] is not None else (*parsed[:9], 0)))
        except (ValueError, TypeError, OverflowError, IndexError):
            pass
    return item.arrival


def _mailbox_key(addresses: list[mime.Address]) -> str:
    """SORT FROM/TO/CC: addr-mailbox of the first address (a group's name for a group)."""
    if not addresses or addresses[0].mailbox is None:
        return ""
    return _casemap(mime.decode_header(addresses[0].mailbox))


def _display_key(addresses: list[mime.Address]) -> str:
    """SORT DISPLAYFROM/DISPLAYTO (RFC 5957): the decoded display name of the first
    address, else its addr-spec (a group: its name), else empty."""
    if not addresses:
        return ""
    a = addresses[0]
    name = mime.decode_header(a.name).strip() if a.name else ""
    if not name:
        if a.host is None:
            name = a.mailbox or ""
        else:
            name = f"{a.mailbox or ''}@{a.host}"
    return _casemap(name)


def _subject_key(item: SortItem) -> str:
    return _casemap(base_subject(mime.decode_header(item.subject or "")))


_KEY_FUNCS: dict[str, Callable[[SortItem], object]] = {
    "ARRIVAL": lambda i: i.arrival,
    "CC": lambda i: _mailbox_key(i.cc),
    "DATE": sent_date,
    "FROM": lambda i: _mailbox_key(i.from_),
    "SIZE": lambda i: i.size,
    "SUBJECT": _subject_key,
    "TO": lambda i: _mailbox_key(i.to),
    "DISPLAYFROM": lambda i: _display_key(i.from_),
    "DISPLAYTO": lambda i: _display_key(i.to),
}


def sort(items: list[SortItem], criteria: list[tuple[str, bool]]) -> list[SortItem]:
    """Sort by (key, reverse) criteria, the first most significant; exact ties
    go by sequence number, ascending whatever REVERSE says (RFC 5256 3).
    Unknown keys raise ValueError (the session answers BAD)."""
    funcs = []
    for name, reverse in criteria:
        f = _KEY_FUNCS.get(name.upper())
        if f is None:
            raise ValueError(f"unknown sort key: {name!r}")
        funcs.append((f, reverse))
    result = sorted(items, key=lambda i: i.seq)
    for f, reverse in reversed(funcs):      # stable sorts, least significant first
        keys = {id(i): f(i) for i in result}
        result.sort(key=lambda i: keys[id(i)], reverse=reverse)  # type: ignore[arg-type, return-value]
    return result


# --- THREAD --------------------------------------------------------------------------


class _Info:
    """Per-call cache of what threading asks of each message many times."""

    def __init__(self) -> None:
        self._subject: dict[int, tuple[str, bool]] = {}
        self._date: dict[int, tuple[float, int]] = {}

    def subject(self, item: SortItem) -> tuple[str, bool]:
        got = self._subject.get(id(item))
        if got is None:
            base, refwd = _extract(mime.decode_header(item.subject or ""))
            got = self._subject[id(item)] = (_casemap(base), refwd)
        return got

    def date(self, item: SortItem) -> tuple[float, int]:
        got = self._date.get(id(item))
        if got is None:
            got = self._date[id(item)] = (sent_date(item), item.seq)
        return got


def thread_orderedsubject(items: Iterable[SortItem]) -> list[Node]:
    """THREAD=ORDEREDSUBJECT ("poor man's threading", RFC 5256 3): messages with
    the same base subject form a thread; its first message (by sent date) is the
    root and all the others are its children; threads go by their first date."""
    info = _Info()
    ordered = sorted(items, key=lambda i: (info.subject(i)[0], info.date(i)))
    threads: list[Node] = []
    current = None
    for item in ordered:
        subject = info.subject(item)[0]
        if threads and subject == current:
            threads[-1].children.append(Node(item))
        else:
            threads.append(Node(item))
            current = subject
    threads.sort(key=lambda n: info.date(n.item))  # type: ignore[arg-type]
    return threads


class _C:
    """A container of the REFERENCES algorithm: a message or a dummy, with its parent."""
    __slots__ = ("item", "parent", "children")

    def __init__(self, item: SortItem | None) -> None:
        self.item = item
        self.parent: _C | None = None
        self.children: list[_C] = []


_MSGID = re.compile(r"<([^<>]*)>")
_WSP = re.compile(r"\s+")


def _message_ids(value: str | None) -> list[str]:
    """Message IDs in a header value, in order (case-sensitive, spaces dropped)."""
    if not value:
        return []
    return [i for m in _MSGID.finditer(value) if (i := _WSP.sub("", m.group(1)))]


def _would_loop(parent: _C, child: _C) -> bool:
    """Whether linking child under parent would make a cycle (parent is child or below it)."""
    c: _C | None = parent
    while c is not None:
        if c is child:
            return True
        c = c.parent
    return False


def _link(parent: _C, child: _C) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _C) -> None:
    assert child.parent is not None
    child.parent.children.remove(child)
    child.parent = None


def _postorder(roots: list[_C]) -> list[_C]:
    """Every container under roots, each after all of its descendants."""
    out: list[_C] = []
    stack = list(roots)
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(c.children)
    out.reverse()
    return out


def thread_references(items: Iterable[SortItem]) -> list[Node]:
    """THREAD=REFERENCES (RFC 5256 3), all six steps: link by References (or
    the first In-Reply-To ID), never re-parenting and never looping; gather
    the roots; prune dummies; sort the roots; merge roots with the same base
    subject; sort every set of siblings by sent date."""
    info = _Info()
    ordered = sorted(items, key=lambda i: i.seq)
    by_id: dict[str, _C] = {}
    containers: list[_C] = []
    for item in ordered:   # the lowest sequence number owns a duplicated Message-ID
        c = _C(item)
        containers.append(c)
        ids = _message_ids(item.message_id)
        if ids and ids[0] not in by_id:
            by_id[ids[0]] = c
    dummies: list[_C] = []

    def container(msgid: str) -> _C:
        c = by_id.get(msgid)
        if c is None:
            c = by_id[msgid] = _C(None)
            dummies.append(c)
        return c

    # (1) links
    for c in containers:
        assert c.item is not None
        refs = _message_ids(c.item.references) or _message_ids(c.item.in_reply_to)[:1]
        prev: _C | None = None
        for msgid in refs:                                  # (1A)
            r = container(msgid)
            if prev is not None and r.parent is None and not _would_loop(prev, r):
                _link(prev, r)
            prev = r
        if c.parent is not None:                            # (1B)
            _unlink(c)
        if prev is not None and not _would_loop(prev, c):
            _link(prev, c)

    # (2) the roots; (3) prune dummies, deepest first: below the top level none
    # survives; at the top one stays when it holds several messages.
    roots = [c for c in containers + dummies if c.parent is None]
    for c in _postorder(roots):
        kept: list[_C] = []
        for child in c.children:
            if child.item is None:
                for g in child.children:
                    g.parent = c
                kept.extend(child.children)
            else:
                kept.append(child)
        c.children = kept
    top: list[_C] = []
    for c in roots:
        if c.item is not None or len(c.children) > 1:
            top.append(c)
        elif c.children:
            c.children[0].parent = None
            top.append(c.children[0])

    def key(c: _C) -> tuple[float, int]:
        return info.date(c.item if c.item is not None else c.children[0].item)  # type: ignore[arg-type]

    # (4) sort the top level (a dummy by its earliest child)
    for c in top:
        if c.item is None:
            c.children.sort(key=key)
    top.sort(key=key)

    # (5) gather threads with the same base subject
    def subject(c: _C) -> tuple[str, bool]:
        return info.subject(c.item if c.item is not None else c.children[0].item)  # type: ignore[arg-type]

    table: dict[str, _C] = {}
    for c in top:                                           # (5B)
        subj = subject(c)[0]
        if not subj:
            continue
        t = table.get(subj)
        if t is None or (t.item is not None and (c.item is None or (subject(t)[1] and not subject(c)[1]))):
            table[subj] = c
    slots: list[_C | None] = list(top)
    pos = {id(c): i for i, c in enumerate(top)}
    for c in top:                                           # (5C)
        if slots[pos[id(c)]] is not c:
            continue   # merged into another thread already
        subj = subject(c)[0]
        if not subj or (t := table[subj]) is c:
            continue
        if t.item is None and c.item is None:
            for g in c.children:
                g.parent = t
            t.children.extend(c.children)
        elif t.item is None or (subject(c)[1] and not subject(t)[1]):
            _link(t, c)
        else:
            d = _C(None)
            _link(d, t)
            _link(d, c)
            slots[pos[id(t)]] = d
            pos[id(d)] = pos[id(t)]
            table[subj] = d
        slots[pos[id(c)]] = None
    top = [c for c in slots if c is not None]
    for c in top:
        c.parent = None

    # (6) sort every set of siblings, children before their parents
    for c in _postorder(top):
        c.children.sort(key=key)
    top.sort(key=key)
    return _nodes(top)


def _nodes(top: list[_C]) -> list[Node]:
    out = [Node(c.item) for c in top]
    stack = list(zip(top, out))
    while stack:
        c, n = stack.pop()
        for child in c.children:
            m = Node(child.item)
            n.children.append(m)
            stack.append((child, m))
    return out


def format_threads(nodes: list[Node], key: Callable[[SortItem], int] = lambda item: item.uid) -> bytes:
    """The THREAD response body, e.g. ``(1)(2 3 4)(5 (6)(7))`` (RFC 5256 4): a
    chain is written flat, a node with several children is followed by one
    parenthesized thread per child, a dummy writes no number.  `key` gives the
    number (UID for UID THREAD, else the sequence number)."""
    live: set[int] = set()   # nodes with a message at or below them
    stack: list[Node] = list(nodes)
    order: list[Node] = []
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):
        if n.item is not None or any(id(k) in live for k in n.children):
            live.add(id(n))

    out: list[str] = []
    work: list[Node | str] = [n for n in reversed(nodes) if id(n) in live]
    while work:
        w = work.pop()
        if isinstance(w, str):
            out.append(w)
            continue
        out.append("(")
        first, cur = True, w
        while True:
            if cur.item is not None:
                out.append(("" if first else " ") + str(key(cur.item)))
                first = False
            kids = [k for k in cur.children if id(k) in live]
            if len(kids) == 1:
                cur = kids[0]
                continue
            if kids and not first:
                out.append(" ")
            work.append(")")
            work.extend(reversed(kids))
            break
    return "".join(out).encode("ascii")

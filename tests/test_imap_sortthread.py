"""SORT and THREAD (mailstack.imap.sortthread): RFC 5256 / RFC 5957 rules,
the RFC's examples, French staff threads as Outlook and Thunderbird write
them, hostile references (loops, duplicates, missing parents) and a fuzz test
over random reference graphs.

The REFERENCES and ORDEREDSUBJECT results and the SORT orders were also
compared, on random mailboxes of a few hundred messages, with Dovecot 2.3's
THREAD and SORT (identical, for subjects without the localized prefixes we
strip and Dovecot does not)."""

from __future__ import annotations

import random
import re
import sys

import pytest

from mailstack.imap.sortthread import (
    Node, SortItem, base_subject, format_threads, is_reply_or_forward, sent_date, sort, thread_orderedsubject,
    thread_references,
)
from mailstack.store.mime import parse_addresses


def msg(seq: int, subject: str | None = "", date: str | None = None, mid: str | None = None,
        irt: str | None = None, refs: str | None = None, from_: str | None = None, to: str | None = None,
        cc: str | None = None, arrival: float | None = None, size: int = 100, uid: int | None = None) -> SortItem:
    """A message as the index gives it: raw header values; the date is a day-time
    shortcut "25 10:00 +0100" (November 2026) unless it contains a comma."""
    if date is not None and "," not in date and date != "garbage":
        day, hm, tz = date.split()
        date = f"{day} Nov 2026 {hm}:00 {tz}"
    return SortItem(uid=uid if uid is not None else seq * 10, seq=seq,
                    arrival=arrival if arrival is not None else 1_790_000_000.0 + seq, size=size, date=date,
                    subject=subject, from_=parse_addresses(from_), to=parse_addresses(to), cc=parse_addresses(cc),
                    message_id=f"<{mid}>" if mid else None, in_reply_to=irt, references=refs)


def seqs(items: list[SortItem]) -> list[int]:
    return [i.seq for i in items]


def threads(nodes: list[Node]) -> str:
    return format_threads(nodes, key=lambda i: i.seq).decode()


# --- a reader for THREAD responses (RFC 5256 section 4 grammar) ----------------------


def parse_threads(text: str) -> list[Node]:
    """thread-list = "(" (thread-members / thread-nested) ")"; thread-members =
    nz-number *(SP nz-number) [SP thread-nested]; thread-nested = 2*thread-list.
    Strict: anything else fails.  Items are SortItems with uid = seq = the number."""
    pos = 0

    def thread_list() -> Node:
        nonlocal pos
        assert text[pos] == "(", (text, pos)
        pos += 1
        if text[pos] == "(":
            node = Node(None, nested())
        else:
            m = re.compile(r"[1-9][0-9]*(?: [1-9][0-9]*)*").match(text, pos)
            assert m, (text, pos)
            pos = m.end()
            chain = [Node(SortItem(int(n), int(n), 0.0, 0)) for n in m.group().split()]
            for a, b in zip(chain, chain[1:]):
                a.children.append(b)
            node = chain[0]
            if text[pos] == " ":
                pos += 1
                chain[-1].children = nested()
        assert text[pos] == ")", (text, pos)
        pos += 1
        return node

    def nested() -> list[Node]:
        out = [thread_list()]
        while text[pos] == "(":
            out.append(thread_list())
        assert len(out) >= 2, (text, pos)
        return out

    out = []
    while pos < len(text):
        out.append(thread_list())
    return out


def shape(nodes: list[Node]) -> list:
    return [(n.item.seq if n.item else None, shape(n.children)) for n in nodes]


# --- base subject --------------------------------------------------------------------


@pytest.mark.parametrize("subject, base, refwd", [
    ("Conseil de classe", "Conseil de classe", False),
    ("Re: Conseil de classe", "Conseil de classe", True),
    ("RE: RE: re:Conseil", "Conseil", True),
    ("Fwd: x", "x", True),
    ("FW: x", "x", True),
    ("Fw : x", "x", True),
    ("Re[2]: x", "x", True),
    ("Re [2] : x", "x", True),
    ("[profs] Re: x", "x", True),
    ("[profs] [3e B] x", "x", False),
    ("[profs]", "[profs]", False),                  # a blob alone is the subject
    ("Re: [profs]", "[profs]", True),
    ("x (fwd)", "x", True),
    ("x (FWD)  (fwd) ", "x", True),
    ("[fwd: x]", "x", True),
    ("[Fwd: Re: [fwd: x]] (fwd)", "x", True),
    ("[fwd: x", "[fwd: x", False),
    ("Re:", "", True),
    ("Re: (fwd)", "", True),
    ("", "", False),
    ("  \t Sujet\t  avec \r\n espaces  ", "Sujet avec espaces", False),
    ("Réunion", "Réunion", False),
    ("Retour de stage", "Retour de stage", False),
    ("Travaux: suite", "Travaux: suite", False),
    ("Trimestre 1", "Trimestre 1", False),
    # Extensions (not RFC 5256): localized prefixes of Outlook and Thunderbird.
    ("RE : Conseil", "Conseil", True),
    ("TR : Conseil", "Conseil", True),
    ("TR: RE : Conseil", "Conseil", True),
    ("Tr: Conseil", "Conseil", True),
    ("Réf : Conseil", "Conseil", True),
    ("RÉF. : Conseil", "Conseil", True),
    ("Rép. : Conseil", "Conseil", True),
    ("RE\u00a0: Conseil", "Conseil", True),        # French typography: no-break space
    ("RE\u202f:\u00a0Conseil", "Conseil", True),
    ("AW: WG: Konferenz", "Konferenz", True),
    ("SV: VS: RV: ENC: Antw: x", "x", True),
    ("Re\u0301f : Conseil", "Conseil", True),      # decomposed é
])
def test_base_subject(subject: str, base: str, refwd: bool) -> None:
    assert base_subject(subject) == base
    assert is_reply_or_forward(subject) is refwd


# --- SORT ----------------------------------------------------------------------------


def test_sort_date_in_utc_with_fallbacks() -> None:
    items = [
        msg(1, date="20 10:00 +0100"),                    # 09:00 UTC
        msg(2, date="20 09:30 +0000"),                    # 09:30 UTC
        msg(3, date="20 03:00 -0500"),                    # 08:00 UTC
        msg(4, date=None, arrival=1795165000.0),          # 20 Nov 2026 08:56:40 UTC, from the arrival
        msg(5, date="garbage", arrival=1795165300.0),     # 09:01:40 UTC
        msg(6, date="20 09:00 +0000"),                    # same instant as 1: sequence order
        msg(7, date="Fri, 20 Nov 2026 09:00:00 +0000 (UTC)"),
    ]
    assert seqs(sort(items, [("DATE", False)])) == [3, 4, 1, 6, 7, 5, 2]
    assert seqs(sort(items, [("DATE", True)])) == [2, 5, 1, 6, 7, 4, 3]   # ties stay in sequence order
    assert sent_date(items[0]) == 1795165200.0
    assert sent_date(items[4]) == 1795165300.0
    assert sent_date(msg(8, date="Fri, 20 Nov 2026 09:00:00")) == 1795165200.0   # no zone: UTC, whatever TZ is
    assert sent_date(msg(9, date="Fri, 20 Nov 99999 09:00:00 +0000", arrival=5.0)) == 5.0


def test_sort_arrival_size_and_ties() -> None:
    items = [msg(1, size=300, arrival=5), msg(2, size=100, arrival=3), msg(3, size=300, arrival=3),
             msg(4, size=100, arrival=9)]
    assert seqs(sort(items, [("ARRIVAL", False)])) == [2, 3, 1, 4]
    assert seqs(sort(items, [("SIZE", False)])) == [2, 4, 1, 3]
    assert seqs(sort(items, [("SIZE", True)])) == [1, 3, 2, 4]
    assert seqs(sort(items, [("SIZE", True), ("ARRIVAL", True)])) == [1, 3, 4, 2]
    assert seqs(sort(list(reversed(items)), [("size", False)])) == [2, 4, 1, 3]   # input order is irrelevant
    assert seqs(sort(items, [])) == [1, 2, 3, 4]
    assert sort([], [("DATE", False)]) == []
    with pytest.raises(ValueError):
        sort(items, [("COLOR", False)])


def test_sort_addresses_and_display_names() -> None:
    items = [
        msg(1, from_="Zoé Lambert <alice@x.fr>", to="b@x.fr", cc="Zed <zed@x>"),
        msg(2, from_="Alice Martin <Bob@x.fr>", to="A <a@x.fr>"),
        msg(3, from_="=?utf-8?q?=C3=89lo=C3=AFse?= <eloise@x.fr>", to="undisclosed-recipients:;", cc="amy@x"),
        msg(4, from_="carl@x.fr"),
        msg(5, from_=None, to="Profs: c@x, d@x;"),
        msg(6, from_="emma <EMMA@x.fr>", to='"" <zz@x.fr>'),
    ]
    # FROM: the first address's mailbox, case-insensitively; no From sorts first
    assert seqs(sort(items, [("FROM", False)])) == [5, 1, 2, 4, 3, 6]
    # DISPLAYFROM: the display name (decoded), else the address
    assert seqs(sort(items, [("DISPLAYFROM", False)])) == [5, 2, 4, 6, 3, 1]
    assert seqs(sort(items, [("DISPLAYFROM", True)])) == [1, 3, 6, 4, 2, 5]
    # TO: a group's first address is the group marker: its name
    assert seqs(sort(items, [("TO", False)])) == [4, 2, 1, 5, 3, 6]
    assert seqs(sort(items, [("DISPLAYTO", False)])) == [4, 2, 1, 5, 3, 6]
    assert seqs(sort(items, [("CC", False)])) == [2, 4, 5, 6, 3, 1]
    assert seqs(sort(items, [("CC", True)])) == [1, 3, 2, 4, 5, 6]


def test_sort_subject_and_compound_keys() -> None:
    items = [
        msg(1, subject="Re: Bulletins", date="25 10:00 +0000"),
        msg(2, subject="=?utf-8?q?R=C3=A9union?=", date="25 09:00 +0000"),
        msg(3, subject="bulletins", date="25 08:00 +0000"),
        msg(4, subject="[profs] Absences", date="25 11:00 +0000"),
        msg(5, subject=None, date="25 12:00 +0000"),
        msg(6, subject="TR : Réunion", date="24 12:00 +0000"),
        msg(7, subject="Emploi du temps", date="25 07:00 +0000"),
    ]
    assert seqs(sort(items, [("SUBJECT", False)])) == [5, 4, 1, 3, 7, 2, 6]
    assert seqs(sort(items, [("SUBJECT", False), ("DATE", False)])) == [5, 4, 3, 1, 7, 6, 2]
    assert seqs(sort(items, [("SUBJECT", True), ("DATE", True)])) == [2, 6, 7, 1, 3, 4, 5]


# --- THREAD response format ----------------------------------------------------------

RFC_ORDEREDSUBJECT = (
    "(166)(167)(168)(169)(172)(170)(171)(173)(174 (175)(176)(178)(181)(180))(179)(177 (183)(182)(188)(184)(185)"
    "(186)(187)(189))(190)(191)(192)(193)(194 195)(196 (197)(198))(199)(200 202)(201)(203)(204)(205)(206 207)"
    "(208)")
RFC_REFERENCES = (
    "(166)(167)(168)(169)(172)((170)(179))(171)(173)((174)(175)(176)(178)(181)(180))(177 (183)(182)(188 (184)"
    "(185)(186)(187)(189)))(190)(191)(192)(193)(194 195)(196 (197)(198))(199)(200 202)(201)(203)(204)(205 206 207)"
    "(208)")


@pytest.mark.parametrize("text", [
    RFC_ORDEREDSUBJECT, RFC_REFERENCES, "(2)(3 6 (4 23)(44 7 96))", "(1)(2 3 4)(5 (6)(7))", "((3)(5))",
    "(1 (2 (3)(4))(5))", "((1 2)(3 (4)(5)))",
])
def test_rfc_thread_responses_round_trip(text: str) -> None:
    assert format_threads(parse_threads(text), key=lambda i: i.uid) == text.encode()


def test_format_threads_nesting_rules() -> None:
    def n(num: int | None, *kids: Node) -> Node:
        return Node(None if num is None else SortItem(num, num, 0.0, 0), list(kids))
    assert format_threads([]) == b""
    assert format_threads([n(1), n(2, n(3, n(4))), n(5, n(6), n(7))]) == b"(1)(2 3 4)(5 (6)(7))"
    assert format_threads([n(None, n(3), n(5))]) == b"((3)(5))"
    assert format_threads([n(1, n(2, n(3), n(4, n(5))))]) == b"(1 2 (3)(4 5))"
    # a dummy with one message, or none, writes nothing of its own
    assert format_threads([n(None, n(3)), n(None), n(4, n(None), n(None, n(None)))]) == b"(3)(4)"
    assert format_threads([n(1, n(None, n(2), n(3)))]) == b"(1 (2)(3))"
    assert format_threads([n(1, n(2))], key=lambda i: i.seq * 100) == b"(100 200)"


# --- THREAD=REFERENCES ---------------------------------------------------------------


def test_rfc_example_tree() -> None:
    """The tree of RFC 5256 section 4: (2)(3 6 (4 23)(44 7 96))."""
    items = [
        msg(2, "Pique-nique", "1 08:00 +0000", "2@x"),
        msg(3, "Cantine", "1 09:00 +0000", "3@x"),
        msg(6, "Re: Cantine", "1 10:00 +0000", "6@x", refs="<3@x>"),
        msg(4, "Re: Cantine", "1 11:00 +0000", "4@x", refs="<3@x> <6@x>"),
        msg(23, "Re: Cantine", "1 12:00 +0000", "23@x", refs="<3@x> <6@x> <4@x>"),
        msg(44, "Re: Cantine", "1 13:00 +0000", "44@x", irt="<6@x>"),
        msg(7, "Re: Cantine", "1 14:00 +0000", "7@x", refs="<3@x> <6@x> <44@x>"),
        msg(96, "Re: Cantine", "1 15:00 +0000", "96@x", refs="<6@x> <44@x> <7@x>"),
    ]
    assert threads(thread_references(items)) == "(2)(3 6 (4 23)(44 7 96))"
    assert format_threads(thread_references(items)) == b"(20)(30 60 (40 230)(440 70 960))"   # UIDs
    random.Random(1).shuffle(items)
    assert threads(thread_references(items)) == "(2)(3 6 (4 23)(44 7 96))"


def test_dummies_pruned_and_kept() -> None:
    items = [
        # two replies to a message not in the mailbox: a dummy keeps them together
        msg(1, "Circulaire", "2 08:00 +0000", "a@x", refs="<lost@rectorat>"),
        msg(2, "Re: Circulaire", "2 09:00 +0000", "b@x", refs="<lost@rectorat>"),
        # one reply to a missing message: promoted to the top
        msg(3, "Planning", "2 10:00 +0000", "c@x", irt="<gone@x>"),
        # a missing message between two present ones: the grandchild becomes a child
        msg(4, "Cantine", "2 11:00 +0000", "d@x"),
        msg(5, "Re: Cantine", "2 12:00 +0000", "e@x", refs="<d@x> <gone2@x>"),
        msg(6, "Re: Cantine", "2 11:30 +0000", "f@x", refs="<d@x>"),
    ]
    assert threads(thread_references(items)) == "((1)(2))(3)(4 (6)(5))"


def test_subject_merging() -> None:
    items = [
        msg(1, "Sortie au musée", "3 08:00 +0000", "1@x"),
        msg(2, "Re: Sortie au musée", "3 09:00 +0000", "2@x"),                 # no references: by subject
        msg(3, "Sortie au musée", "3 10:00 +0000", "3@x"),                     # same subject, not a reply
        msg(4, "Fwd: Emploi du temps", "3 07:00 +0000", "4@x"),
        msg(5, "Emploi du temps", "3 11:00 +0000", "5@x"),                     # the original comes later
        msg(6, "Re: Bulletins", "3 06:00 +0000", "6@x"),
        msg(7, "Re: Bulletins", "3 06:30 +0000", "7@x"),
        msg(8, "", "3 05:00 +0000", "8@x"),                                    # empty subjects never merge
        msg(9, "Re:", "3 05:30 +0000", "9@x"),
    ]
    assert threads(thread_references(items)) == "(8)(9)((6)(7))((1 2)(3))(5 4)"


def test_french_staff_threads() -> None:
    """A morning in a collège's staff mailbox, as Outlook, Thunderbird and
    phones write it: Outlook's "RE :" / "TR :" with only In-Reply-To, a
    forward with no reference at all, a broken In-Reply-To, a resent message
    with the same Message-ID, a reference loop between two messages, a
    message that references itself, replies to a circular we never got."""
    items = [
        msg(1, "Conseil de classe 3e B", "23 10:00 +0100", "c1@clg.fr", from_="Principal <ce.0760001a@ac-normandie.fr>"),
        msg(2, "RE : Conseil de classe 3e B", "23 10:30 +0100", "c2@outlook.fr", irt="<c1@clg.fr>",
            from_="Anne Martin <anne.martin@ac-normandie.fr>"),
        msg(3, "Re: RE : Conseil de classe 3e B", "23 11:00 +0100", "c3@tb.fr",
            refs="<c1@clg.fr> <c2@outlook.fr>", irt="<c2@outlook.fr>"),
        msg(4, "TR : Conseil de classe 3e B", "23 12:00 +0100", "c4@outlook.fr"),   # forward: no references
        msg(5, "Sortie au musée", "23 09:00 +0100", "s1@clg.fr"),
        msg(6, "Re: Sortie au musée", "23 09:20 +0100", "s2@phone.fr",
            irt="Your message of Mon, 23 Nov 2026 <s1@clg.fr"),                   # broken In-Reply-To
        msg(7, "Réf. : Sortie au musée", "23 09:40 +0100", "s3@x.fr", refs="<lost@clg.fr>"),
        msg(8, "Emploi du temps", "23 08:00 +0100", "e1@clg.fr", refs="<e2@clg.fr>"),
        msg(9, "RE : Emploi du temps", "23 08:10 +0100", "e2@clg.fr", refs="<e1@clg.fr>"),   # loop 8 <-> 9
        msg(10, "Bulletins", "23 07:00 +0100", "b1@clg.fr", refs="<b0@clg.fr> <b1@clg.fr>"),  # itself
        msg(11, "TR: Circulaire rectorale", "23 13:00 +0100", "r1@x.fr", refs="<circ@ac-normandie.fr>"),
        msg(12, "TR : Circulaire rectorale", "23 13:05 +0100", "r2@x.fr", irt="<circ@ac-normandie.fr>"),
        msg(13, "Conseil de classe 3e B", "23 14:00 +0100", "c1@clg.fr"),           # resent, same Message-ID
        msg(14, "RE : Bulletins", None, None, irt="<b1@clg.fr>", arrival=1795000000.0),  # no Date, no Message-ID
    ]
    assert threads(thread_references(items)) == \
        "(10 14)(9 8)(5 (6)(7))((1 (2 3)(4))(13))((11)(12))"
    # ORDEREDSUBJECT: by base subject and sent date only, so "RE : Emploi du temps"
    # follows its original, and 14 (no Date: its arrival, days earlier) leads "Bulletins"
    assert threads(thread_orderedsubject(items)) == "(14 10)(8 9)(5 (6)(7))(1 (2)(3)(4)(13))(11 12)"


def test_reference_loops_and_duplicates_terminate() -> None:
    items = [
        msg(1, "a", "4 08:00 +0000", "1@x", refs="<3@x> <2@x>"),
        msg(2, "b", "4 09:00 +0000", "2@x", refs="<1@x> <3@x>"),
        msg(3, "c", "4 10:00 +0000", "3@x", refs="<2@x> <1@x>"),
        msg(4, "d", "4 11:00 +0000", "4@x", refs="<4@x> <4@x> <4@x>"),
        msg(5, "e", "4 12:00 +0000", "4@x", refs="<4@x>"),                 # duplicate ID referencing "itself"
        msg(6, "f", "4 13:00 +0000", "6@x", refs="<1@x> <2@x> <3@x> <1@x> <6@x>"),
        msg(7, "g", "4 14:00 +0000", "7@x", refs="<  7@x > <>"),
    ]
    # 1 links 3 -> 2 -> 1; 2 and 3 would close loops and change nothing; 6's last
    # reference is itself, so it has no parent; 5 is a duplicate of 4's ID: a reply to 4
    assert threads(thread_references(items)) == "(3 2 1)(4 5)(6)(7)"


def test_deep_threads_do_not_recurse() -> None:
    n = max(2 * sys.getrecursionlimit(), 2500)
    chain = [msg(i, "Re: relance" if i > 1 else "relance", None, f"{i}@x", irt=f"<{i - 1}@x>", arrival=float(i))
             for i in range(1, n + 1)]
    assert threads(thread_references(chain)) == "(" + " ".join(map(str, range(1, n + 1))) + ")"
    # a comb: each message has a leaf reply and a reply that goes on
    comb = [msg(1, "x", None, "1@x", arrival=1.0)]
    for i in range(2, n + 1, 2):
        comb.append(msg(i, "x", None, f"{i}@x", irt=f"<{i - 1}@x>", arrival=float(i)))       # leaf
        comb.append(msg(i + 1, "x", None, f"{i + 1}@x", irt=f"<{i - 1}@x>", arrival=float(i + 1)))
    expected = str(len(comb))   # odd i: "i (i+1)(<the rest>)"; the last one alone
    for i in range(len(comb) - 2, 0, -2):
        expected = f"{i} ({i + 1})({expected})"
    assert threads(thread_references(comb)) == f"({expected})"


# --- THREAD=ORDEREDSUBJECT -----------------------------------------------------------


def test_orderedsubject() -> None:
    items = [
        msg(1, "Re: Cantine", "5 10:00 +0000"),
        msg(2, "Cantine", "5 09:00 +0000"),
        msg(3, "Absences", "5 12:00 +0000"),
        msg(4, "TR : cantine", "5 11:00 +0000"),
        msg(5, "RE : Absences", "5 13:00 +0000"),
        msg(6, "Sortie", "5 08:00 +0000"),
        msg(7, "Cantine", "5 09:00 +0000"),                  # same date as 2: sequence order
        msg(8, "Absences", "5 14:00 +0000"),
    ]
    assert threads(thread_orderedsubject(items)) == "(6)(2 (7)(1)(4))(3 (5)(8))"
    assert threads(thread_orderedsubject([msg(1, "a"), msg(2, "Re: a")])) == "(1 2)"
    assert thread_orderedsubject([]) == []


# --- fuzz ----------------------------------------------------------------------------


def _random_mailbox(rng: random.Random, n: int) -> list[SortItem]:
    subjects = ["Conseil", "Sortie", "Bulletins", "", "Réunion parents", "[profs] Planning"]
    prefixes = ["", "", "Re: ", "RE : ", "TR : ", "Fwd: ", "Re: Re: "]
    items = []
    for seq in range(1, n + 1):
        ids = [f"<m{rng.randint(1, n + 20)}@x>" for _ in range(rng.choice([0, 0, 1, 2, 5, 12]))]
        if rng.random() < 0.05:
            ids += ids[:]   # repeated sequences: loops
        mid = f"m{seq}@x" if rng.random() < 0.9 else (f"m{rng.randint(1, n)}@x" if rng.random() < 0.5 else None)
        date = None
        if rng.random() < 0.85:
            date = f"{rng.randint(1, 28)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} " \
                   f"{rng.choice(['+0100', '-0500', '+0000'])}"
        elif rng.random() < 0.5:
            date = "garbage"
        items.append(msg(seq, rng.choice(prefixes) + rng.choice(subjects), date, mid,
                         irt=f"<m{rng.randint(1, n + 5)}@x>" if rng.random() < 0.5 else None,
                         refs=" ".join(ids) if ids else None, arrival=float(rng.randint(0, 10 ** 6)),
                         size=rng.randint(100, 200), uid=seq + 1000))
    return items


def _key(n: Node) -> tuple[float, int]:
    item = n.item if n.item is not None else n.children[0].item
    assert item is not None
    return sent_date(item), item.seq


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_references(seed: int) -> None:
    rng = random.Random(seed)
    items = _random_mailbox(rng, rng.randint(200, 400))
    tree = thread_references(items)
    seen: list[int] = []
    stack = [(n, 0) for n in tree]
    for n in tree:   # dummies only at the top, and only holding several messages
        assert n.item is not None or (len(n.children) >= 2 and all(k.item is not None for k in n.children))
    assert [_key(n) for n in tree] == sorted(_key(n) for n in tree)
    while stack:
        n, depth = stack.pop()
        if depth:
            assert n.item is not None
        if n.item is not None:
            seen.append(n.item.seq)
        keys = [_key(k) for k in n.children]
        assert keys == sorted(keys)
        stack.extend((k, depth + 1) for k in n.children)
    assert sorted(seen) == sorted(i.seq for i in items)

    text = format_threads(tree).decode()
    numbers = [int(x) for x in re.findall(r"[0-9]+", text)]
    assert sorted(numbers) == sorted(i.uid for i in items)
    assert format_threads(parse_threads(text), key=lambda i: i.uid).decode() == text
    assert shape(parse_threads(format_threads(tree, key=lambda i: i.seq).decode())) == shape(tree)

    shuffled = items[:]
    rng.shuffle(shuffled)
    assert format_threads(thread_references(shuffled)).decode() == text

    ordered = thread_orderedsubject(items)
    assert sorted(i.item.seq for n in ordered for i in [n, *n.children]) == sorted(i.seq for i in items)
    assert all(not k.children for n in ordered for k in n.children)
    parse_threads(format_threads(ordered).decode())

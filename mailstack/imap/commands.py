"""Commands of the selected state: FETCH, STORE, SEARCH, COPY, MOVE, SORT, THREAD.

They are methods of ``Session`` (bound in its class body), kept here so each
file stays readable.  The store work of a command runs in a worker thread
in batches; the reactor only writes what the batch produced, streaming
large bodies from their files.
"""

from __future__ import annotations

import email.utils
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..store import mime
from ..store.folder import KeywordLimit, MessageGone, OverQuota
from ..store.mailbox import NoSuchFolder
from . import format as fmt
from . import parser as p
from .errors import Bad, No

if TYPE_CHECKING:
    from .session import Session

BATCH = 200
BATCH_BYTES = 4 << 20  # at most this much response held in memory per batch
INLINE_LIMIT = 256 * 1024  # larger bodies are streamed from the file


# --- FETCH --------------------------------------------------------------------------------------


async def cmd_FETCH(self: Session, cmd: p.Command) -> Any:
    return await _fetch(self, cmd, by_uid=False)


async def cmd_UID_FETCH(self: Session, cmd: p.Command) -> Any:
    return await _fetch(self, cmd, by_uid=True)


async def _fetch(self: Session, cmd: p.Command, by_uid: bool) -> Any:
    view = self.view
    assert view is not None
    if len(cmd.args) < 2:
        raise Bad("FETCH needs a sequence set and items")
    ranges = p.sequence_set(cmd.args[0], view.largest(by_uid))
    attrs = p.fetch_attrs(cmd.args[1])
    changed_since = None
    vanished = False
    if len(cmd.args) > 2:
        mods = cmd.args[2]
        if not isinstance(mods, list):
            raise Bad("invalid FETCH modifiers")
        i = 0
        while i < len(mods):
            key = str(mods[i]).upper()
            if key == "CHANGEDSINCE" and i + 1 < len(mods):
                changed_since = p.number(mods[i + 1], "MODSEQ")
                i += 2
            elif key == "VANISHED":
                if not by_uid or "QRESYNC" not in self.enabled:
                    raise Bad("VANISHED needs UID FETCH and QRESYNC")
                vanished = True
                i += 1
            else:
                raise Bad(f"unknown FETCH modifier {key[:20]}")
        if vanished and changed_since is None:
            raise Bad("VANISHED needs CHANGEDSINCE")
    names = {a.name for a in attrs}
    if by_uid and "UID" not in names:
        attrs.insert(0, p.FetchAttr("UID", original="UID"))
    if changed_since is not None:
        self.enabled.add("CONDSTORE")
    if "CONDSTORE" in self.enabled and (changed_since is not None or "MODSEQ" in names) and "MODSEQ" not in names:
        attrs.append(p.FetchAttr("MODSEQ", original="MODSEQ"))
    uids = [u for u in view.uids_in(ranges, by_uid) if u not in view.pending_expunges]
    if changed_since is not None:
        uids = [u for u in uids if view.messages[u].modseq > changed_since]
        if vanished:
            gone, _ = await self.io.blocking(view.folder.expunged_since, changed_since)
            gone = [u for u in gone if p.in_ranges(u, ranges)]
            if gone:
                self.io.write(b"* VANISHED (EARLIER) " + fmt.sequence_set(gone) + b"\r\n")
    sets_seen = not view.readonly and any(
        a.name in ("BODY", "BINARY") and not a.structure and not a.peek
        or a.name in ("RFC822", "RFC822.TEXT")
        for a in attrs
    )
    if sets_seen and "FLAGS" not in {a.name for a in attrs}:
        attrs.append(p.FetchAttr("FLAGS", original="FLAGS"))
    utf8 = "UTF8=ACCEPT" in self.enabled
    i = 0
    while i < len(uids):
        batch = uids[i : i + BATCH]
        segments, done = await self.io.blocking(_fetch_batch, self, batch, attrs, sets_seen, utf8)
        i += done
        await self.io.drain()  # a client that does not read makes us wait, not buffer
        for seg in segments:
            if isinstance(seg, bytes):
                self.io.write(seg)
            else:
                f, length = seg
                try:
                    await self.io.stream(f, length)
                finally:
                    f.close()
    await self.announce(allow_expunge=by_uid)


def _fetch_batch(self: Session, uids: list[int], attrs: list[p.FetchAttr], sets_seen: bool, utf8: bool) -> list:
    """Blocking: the responses for a batch, as bytes and (file, length) segments."""
    view = self.view
    assert view is not None
    folder = view.folder
    if sets_seen:
        unseen = [u for u in uids if "\\Seen" not in view.messages[u].flags]
        if unseen:
            changed, _ = folder.store(unseen, ["\\Seen"], "add")
            view.apply_local(changed)
    # Parsed data only when asked for: BODY.PEEK[] (mbsync, offlineimap) reads the file alone.
    needs_info = any(a.name in ("ENVELOPE", "BODYSTRUCTURE") or a.structure or a.section for a in attrs)
    infos = folder.infos(uids) if needs_info else {}
    out: list = []
    held = 0
    done = 0
    for uid in uids:
        done += 1
        m = view.messages.get(uid)
        seq = view.seq_of(uid)
        if m is None or seq is None:
            continue
        try:
            parts = _fetch_one(self, folder, m, seq, attrs, infos.get(uid), utf8)
        except MessageGone:
            continue  # expunged by another session meanwhile: it will be announced
        out += parts
        held += sum(len(x) for x in parts if isinstance(x, bytes))
        if held > BATCH_BYTES:
            break  # the rest in the next batch: memory stays bounded
    return _merge(out), done


def _fetch_one(self: Session, folder, m, seq: int, attrs: list[p.FetchAttr], info, utf8: bool) -> list:
    parts: list = [f"* {seq} FETCH (".encode()]
    first = True
    for a in attrs:
        parts.append(b"" if first else b" ")
        first = False
        n = a.name
        if n == "UID":
            parts.append(f"UID {m.uid}".encode())
        elif n == "FLAGS":
            parts.append(b"FLAGS " + fmt.flag_list(self._flags(m)))
        elif n == "MODSEQ":
            parts.append(f"MODSEQ ({m.modseq})".encode())
        elif n == "RFC822.SIZE":
            parts.append(f"RFC822.SIZE {m.size}".encode())
        elif n == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + fmt.internal_date(folder.internal_date(m.uid)))
        elif n == "ENVELOPE":
            parts.append(b"ENVELOPE " + fmt.envelope(_info(folder, m.uid, info).envelope, utf8=utf8))
        elif n == "BODYSTRUCTURE":
            parts.append(b"BODYSTRUCTURE " + fmt.body_structure(_info(folder, m.uid, info).root, extensible=True))
        elif a.structure:
            parts.append(b"BODY " + fmt.body_structure(_info(folder, m.uid, info).root, extensible=False))
        elif n in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            section = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[n]
            parts.append(n.encode() + b" ")
            parts += _section(folder, m, section, (), False, None, _info_lazy(folder, m.uid, info, section))
        elif n == "BINARY.SIZE":
            size = _binary(folder, m, a.section, None, _info_lazy(folder, m.uid, info, a.section), size_only=True)
            parts.append(f"BINARY.SIZE[{a.section}] {size}".encode())
        elif n == "BINARY":
            label = f"BINARY[{a.section}]" + (f"<{a.partial[0]}>" if a.partial else "")
            parts.append(label.encode() + b" ")
            parts += _binary(folder, m, a.section, a.partial, _info_lazy(folder, m.uid, info, a.section))
        else:  # BODY[section]<partial>
            label = "BODY[" + _section_label(a) + "]" + (f"<{a.partial[0]}>" if a.partial else "")
            parts.append(label.encode() + b" ")
            parts += _section(folder, m, a.section, a.fields, a.section.endswith(".NOT"), a.partial,
                              _info_lazy(folder, m.uid, info, a.section))
    parts.append(b")\r\n")
    return parts


def _section_label(a: p.FetchAttr) -> str:
    """The section as the client wrote it (field names keep their case)."""
    m = re.search(r"\[(.*)\]", a.original, re.S)
    label = m.group(1) if m else a.section
    return label if a.fields else label.upper()


def _info(folder, uid: int, info):
    return info if info is not None else folder.info(uid)


def _info_lazy(folder, uid: int, info, section: str):
    """Parsed data for a section; the whole message (section "") needs none."""
    return _info(folder, uid, info) if section else None


def _section(folder, m, section: str, fields: tuple[str, ...], negate: bool, partial, info) -> list:
    """A body section as a literal: bytes, or a (file, length) segment to stream."""
    if "HEADER.FIELDS" in section:  # "HEADER.FIELDS[.NOT]" or "1.2.HEADER.FIELDS[.NOT]"
        base = section.split("HEADER.FIELDS")[0] + "HEADER"
        try:
            start, end = mime.section_range(info, base)
            with folder.open_range(m.uid, start) as f:
                header = f.read(end - start)
        except ValueError:
            header = b""
        data = _filter_header(header, fields, negate)
        return [_literal(_slice(data, partial))]
    if section == "":
        start, end = 0, m.size
    else:
        try:
            start, end = mime.section_range(info, section)
        except ValueError:
            return [b'""']
    if partial is not None:
        off, count = partial
        start = min(start + off, end)
        if count is not None:
            end = min(end, start + count)
    length = max(end - start, 0)
    f = folder.open_range(m.uid, start)
    if length <= INLINE_LIMIT:
        with f:
            data = f.read(length)
        return [_literal(data)]
    return [f"{{{length}}}\r\n".encode(), (f, length)]


def _part_at(info: mime.MessageInfo, section: str) -> mime.Part | None:
    """The MIME part an IMAP part number names (RFC 3501 6.4.5)."""
    node = info.root
    for num in section.split("."):
        n = int(num)
        if node.maintype == "message" and node.subtype == "rfc822" and node.children:
            node = node.children[0]
        if node.maintype == "multipart":
            if not 1 <= n <= len(node.children):
                return None
            node = node.children[n - 1]
        elif n != 1:
            return None
    return node


def _binary(folder, m, section: str, partial, info, size_only: bool = False):
    """BINARY[section]: the part with its Content-Transfer-Encoding undone
    (RFC 3516), decoded in chunks into a spool that stays small in memory."""
    import base64
    import binascii
    import tempfile

    if section == "":
        start, end, encoding = 0, m.size, "8BIT"
    else:
        part = _part_at(info, section)
        if part is None:
            return 0 if size_only else [b"NIL"]
        start, end = mime.section_range(info, section)
        encoding = "8BIT" if part.maintype in ("multipart", "message") else part.encoding.upper()
    if encoding not in ("7BIT", "8BIT", "BINARY", "BASE64", "QUOTED-PRINTABLE"):
        raise No(f"cannot decode Content-Transfer-Encoding {encoding[:30]}", "UNKNOWN-CTE")
    spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    pending = b""
    with folder.open_range(m.uid, start) as f:
        left = end - start
        while left > 0:
            chunk = f.read(min(1 << 16, left))
            if not chunk:
                break
            left -= len(chunk)
            if encoding == "BASE64":
                pending += b"".join(chunk.split())
                cut = len(pending) - len(pending) % 4
                try:
                    spool.write(base64.b64decode(pending[:cut]))
                except binascii.Error:
                    raise No("the part's base64 is damaged", "UNKNOWN-CTE") from None
                pending = pending[cut:]
            elif encoding == "QUOTED-PRINTABLE":
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                spool.write(binascii.a2b_qp(pending[:cut]))
                pending = pending[cut:]
            else:
                spool.write(chunk)
    if pending:
        spool.write(binascii.a2b_qp(pending) if encoding == "QUOTED-PRINTABLE" else base64.b64decode(pending + b"=" * (-len(pending) % 4)))
    length = spool.tell()
    if size_only:
        spool.close()
        return length
    offset = 0
    if partial is not None:
        offset = min(partial[0], length)
        length = length - offset if partial[1] is None else min(partial[1], length - offset)
    spool.seek(offset)
    head = f"~{{{length}}}\r\n".encode()  # literal8: the data may hold NUL
    if length <= INLINE_LIMIT:
        data = spool.read(length)
        spool.close()
        return [head + data]
    return [head, (spool, length)]


def _slice(data: bytes, partial) -> bytes:
    if partial is None:
        return data
    off, count = partial
    return data[off : off + count] if count is not None else data[off:]


def _literal(data: bytes) -> bytes:
    return f"{{{len(data)}}}\r\n".encode() + data


def _filter_header(header: bytes, fields: tuple[str, ...], negate: bool) -> bytes:
    wanted = {f.upper().encode() for f in fields}
    out, keep = [], False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().upper()
        keep = (name in wanted) != negate
        if keep:
            out.append(line)
    return b"".join(x + b"\r\n" for x in out) + b"\r\n"


def _merge(parts: list) -> list:
    """Join consecutive bytes so the reactor writes few large chunks."""
    out: list = []
    buf: list[bytes] = []
    for x in parts:
        if isinstance(x, bytes):
            buf.append(x)
        else:
            if buf:
                out.append(b"".join(buf))
                buf = []
            out.append(x)
    if buf:
        out.append(b"".join(buf))
    return out


# --- STORE ---------------------------------------------------------------------------------------


async def cmd_STORE(self: Session, cmd: p.Command) -> Any:
    return await _store(self, cmd, by_uid=False)


async def cmd_UID_STORE(self: Session, cmd: p.Command) -> Any:
    return await _store(self, cmd, by_uid=True)


async def _store(self: Session, cmd: p.Command, by_uid: bool) -> Any:
    view = self._writable()
    args = list(cmd.args)
    if len(args) < 3:
        raise Bad("STORE needs a sequence set, an action and flags")
    ranges = p.sequence_set(args.pop(0), view.largest(by_uid))
    unchanged_since = None
    if isinstance(args[0], list):
        mods = args.pop(0)
        if len(mods) != 2 or str(mods[0]).upper() != "UNCHANGEDSINCE":
            raise Bad("invalid STORE modifier")
        unchanged_since = p.number(mods[1], "MODSEQ")
        self.enabled.add("CONDSTORE")
    action = str(args.pop(0)).upper()
    m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", action)
    if not m or not args:
        raise Bad("expected FLAGS, +FLAGS or -FLAGS")
    mode = {"+": "add", "-": "remove", "": "replace"}[m.group(1)]
    silent = bool(m.group(2))
    flags = p.flags(args[0] if len(args) == 1 else list(args))
    uids = [u for u in view.uids_in(ranges, by_uid) if u not in view.pending_expunges]

    def work():
        return view.folder.store(uids, flags, mode, unchanged_since)

    try:
        changed, refused = await self.io.blocking(work)
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    view.apply_local(changed)
    changed_uids = {c.uid for c in changed}
    condstore = "CONDSTORE" in self.enabled
    out = []
    for uid in uids:
        if uid in refused:
            continue
        msg = view.messages.get(uid)
        seq = view.seq_of(uid)
        if msg is None or seq is None:
            continue
        if silent and not (condstore and uid in changed_uids):
            continue
        items = []
        if by_uid:
            items.append((b"UID", str(uid).encode()))
        if not silent:
            items.append((b"FLAGS", fmt.flag_list(self._flags(msg))))
        if condstore:
            items.append((b"MODSEQ", f"({msg.modseq})".encode()))
        out.append(fmt.fetch_response(seq, items))
    self.io.write(b"".join(out))
    await self.announce(allow_expunge=by_uid)
    if refused:
        numbers = refused if by_uid else [view.seq_of(u) for u in refused if view.seq_of(u)]
        return f"[MODIFIED {fmt.sequence_set(numbers).decode()}] conditional STORE failed"
    return "STORE completed"


# --- COPY and MOVE ---------------------------------------------------------------------------------


async def cmd_COPY(self: Session, cmd: p.Command) -> Any:
    return await _transfer(self, cmd, by_uid=False, move=False)


async def cmd_UID_COPY(self: Session, cmd: p.Command) -> Any:
    return await _transfer(self, cmd, by_uid=True, move=False)


async def cmd_MOVE(self: Session, cmd: p.Command) -> Any:
    return await _transfer(self, cmd, by_uid=False, move=True)


async def cmd_UID_MOVE(self: Session, cmd: p.Command) -> Any:
    return await _transfer(self, cmd, by_uid=True, move=True)


async def _transfer(self: Session, cmd: p.Command, by_uid: bool, move: bool) -> Any:
    view = self._writable() if move else self.view
    assert view is not None and self.mailbox is not None
    if len(cmd.args) != 2:
        raise Bad("expected a sequence set and a folder")
    ranges = p.sequence_set(cmd.args[0], view.largest(by_uid))
    name = self._mailbox_arg(cmd.args[1])
    uids = [u for u in view.uids_in(ranges, by_uid) if u not in view.pending_expunges]
    mb = self.mailbox

    def work():
        dest = mb.folder(name)
        try:
            pairs = view.folder.move(uids, dest) if move else view.folder.copy(uids, dest)
            return dest.uidvalidity, pairs
        finally:
            if dest is not view.folder:
                dest.close()

    try:
        validity, pairs = await self.io.blocking(work)
    except NoSuchFolder:
        raise No(f"no folder {name}", "TRYCREATE") from None
    except OverQuota as e:
        raise No(str(e), "OVERQUOTA") from None
    except KeywordLimit as e:
        raise No(str(e), "LIMIT") from None
    code = ""
    if pairs:
        src = fmt.sequence_set([a for a, _ in pairs]).decode()
        dst = fmt.sequence_set([b for _, b in pairs]).decode()
        # COPYUID pairs UIDs in order: both sides ascend together here.
        code = f"[COPYUID {validity} {src} {dst}] "
    if move:
        if code:
            self.io.write(f"* OK {code}moved\r\n".encode())
        self._announce_removed([a for a, _ in pairs])
        await self.announce(allow_expunge=True)
        return "MOVE completed"
    await self.announce(allow_expunge=by_uid)
    return f"{code}COPY completed"


# --- SEARCH ------------------------------------------------------------------------------------------


async def cmd_SEARCH(self: Session, cmd: p.Command) -> Any:
    return await _search(self, cmd, by_uid=False)


async def cmd_UID_SEARCH(self: Session, cmd: p.Command) -> Any:
    return await _search(self, cmd, by_uid=True)


async def _search(self: Session, cmd: p.Command, by_uid: bool) -> Any:
    view = self.view
    assert view is not None
    args = list(cmd.args)
    returns = None
    if len(args) >= 2 and isinstance(args[0], p.Atom) and args[0].upper() == "RETURN" and isinstance(args[1], list):
        returns = [str(x).upper() for x in args[1]] or ["ALL"]
        for r in returns:
            if r not in ("MIN", "MAX", "COUNT", "ALL"):
                raise Bad(f"unsupported RETURN option {r[:10]}")
        args = args[2:]
    args = _charset(args)
    tree = _parse_keys(args, view)
    uids, modseq_used = await self.io.blocking(_evaluate, self, tree)
    result = sorted(uids)
    numbers = result if by_uid else [view.seq_of(u) for u in result]
    numbers = [n for n in numbers if n]
    highest = max((view.messages[u].modseq for u in result), default=0) if modseq_used else 0
    if returns is None:
        line = b"* SEARCH" + b"".join(b" " + str(n).encode() for n in numbers)
        if modseq_used and numbers:
            line += f" (MODSEQ {highest})".encode()
        self.io.write(line + b"\r\n")
    else:
        parts = [f'* ESEARCH (TAG "{cmd.tag}")'] + (["UID"] if by_uid else [])
        if numbers:
            if "MIN" in returns:
                parts.append(f"MIN {numbers[0]}")
            if "MAX" in returns:
                parts.append(f"MAX {numbers[-1]}")
            if "ALL" in returns:
                parts.append("ALL " + fmt.sequence_set(numbers).decode())
        if "COUNT" in returns:
            parts.append(f"COUNT {len(numbers)}")
        if modseq_used and numbers:
            parts.append(f"MODSEQ {highest}")
        self.io.write((" ".join(parts) + "\r\n").encode())
    await self.announce(allow_expunge=by_uid)


def _charset(args: list) -> list:
    if args and isinstance(args[0], p.Atom) and args[0].upper() == "CHARSET":
        if len(args) < 2:
            raise Bad("CHARSET needs a name")
        cs = p.text(args[1]).upper()
        if cs not in ("UTF-8", "US-ASCII"):
            raise No(f"unsupported charset {cs[:20]}", "BADCHARSET (UTF-8 US-ASCII)")
        return args[2:]
    return args


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


def _parse_keys(tokens: list, view) -> tuple:
    keys = []
    i = 0
    while i < len(tokens):
        key, i = _parse_key(tokens, i, view)
        keys.append(key)
    if not keys:
        raise Bad("SEARCH needs a criterion")
    return ("and", keys)


def _parse_key(t: list, i: int, view) -> tuple[tuple, int]:
    tok = t[i]
    if isinstance(tok, list):
        return _parse_keys(tok, view), i + 1
    if not isinstance(tok, p.Atom):
        raise Bad("expected a search key")
    k = tok.upper()

    def arg(n: int = 1):
        if i + n >= len(t):
            raise Bad(f"{k} needs an argument")
        return t[i + n]

    if k == "ALL":
        return ("all",), i + 1
    if k in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[k]
        return ("flag", flag, present), i + 1
    if k in ("NEW", "RECENT"):
        return ("none",) if k == "RECENT" else ("flag", "\\Seen", False), i + 1
    if k == "OLD":
        return ("all",), i + 1
    if k in ("KEYWORD", "UNKEYWORD"):
        return ("flag", str(arg()), k == "KEYWORD"), i + 2
    if k in _HEADER_KEYS:
        return ("header", k.lower(), p.text(arg())), i + 2
    if k == "HEADER":
        return ("header", p.text(arg()).lower(), p.text(arg(2))), i + 3
    if k in ("BODY", "TEXT"):
        return (k.lower(), p.text(arg())), i + 2
    if k in _DATE_KEYS:
        return ("date", k, _search_date(arg())), i + 2
    if k in ("LARGER", "SMALLER"):
        return ("size", k, p.number(arg())), i + 2
    if k == "UID":
        return ("uids", p.sequence_set(arg(), view.largest(True))), i + 2
    if k == "NOT":
        sub, j = _parse_key(t, i + 1, view) if i + 1 < len(t) else (None, 0)
        if sub is None:
            raise Bad("NOT needs a key")
        return ("not", sub), j
    if k == "OR":
        if i + 2 >= len(t):
            raise Bad("OR needs two keys")
        a, j = _parse_key(t, i + 1, view)
        if j >= len(t):
            raise Bad("OR needs two keys")
        b, j = _parse_key(t, j, view)
        return ("or", a, b), j
    if k == "MODSEQ":
        j = i + 1
        if j + 2 < len(t) + 1 and isinstance(t[j], bytes):  # entry name and type: ignored
            j += 2
        if j >= len(t):
            raise Bad("MODSEQ needs a value")
        return ("modseq", p.number(t[j], "MODSEQ")), j + 1
    if k[:1].isdigit() or k[:1] == "*" or k == "$":
        return ("seqs", p.sequence_set(tok, view.largest(False))), i + 1
    raise Bad(f"unknown search key {k[:20]}")


def _search_date(tok) -> datetime:
    try:
        d = datetime.strptime(p.text(tok), "%d-%b-%Y")
    except ValueError:
        raise Bad("expected a date like 1-Feb-2026") from None
    return d


def _evaluate(self: Session, tree: tuple) -> tuple[set[int], bool]:
    view = self.view
    assert view is not None
    everything = [u for u in view.uids if u not in view.pending_expunges]
    used_modseq = [False]

    def ev(node: tuple, cand: list[int]) -> set[int]:
        kind = node[0]
        if kind == "all":
            return set(cand)
        if kind == "none":
            return set()
        if kind == "and":
            current = list(cand)
            for sub in sorted(node[1], key=_cost):
                current = sorted(ev(sub, current))
                if not current:
                    break
            return set(current)
        if kind == "or":
            return ev(node[1], cand) | ev(node[2], cand)
        if kind == "not":
            return set(cand) - ev(node[1], cand)
        if kind == "flag":
            _, flag, present = node
            return {u for u in cand if (flag in view.messages[u].flags) == present}
        if kind == "size":
            _, op, n = node
            return {u for u in cand if (view.messages[u].size > n if op == "LARGER" else view.messages[u].size < n)}
        if kind == "uids":
            return {u for u in cand if p.in_ranges(u, node[1])}
        if kind == "seqs":
            return {u for u in cand if p.in_ranges(view.seq_of(u) or 0, node[1])}
        if kind == "modseq":
            used_modseq[0] = True
            return {u for u in cand if view.messages[u].modseq >= node[1]}
        if kind == "header":
            return view.folder.search_header(node[1], node[2], cand)
        if kind == "body":
            return view.folder.search_text(node[1], cand, body_only=True)
        if kind == "text":
            return view.folder.search_text(node[1], cand)
        if kind == "date":
            return _date_match(view.folder, cand, node[1], node[2])
        raise Bad("unsupported search key")

    return ev(tree, everything), used_modseq[0]


def _cost(node: tuple) -> int:
    return {"uids": 0, "seqs": 0, "flag": 1, "size": 1, "modseq": 1, "all": 1, "none": 0, "date": 3,
            "header": 4, "and": 5, "or": 5, "not": 5, "body": 9, "text": 9}.get(node[0], 5)


def _date_match(folder, cand: list[int], key: str, day: datetime) -> set[int]:
    out = set()
    sent = key.startswith("SENT")
    op = key[4:] if sent else key
    infos = folder.infos(cand) if sent else {}
    for u in cand:
        if sent:
            raw = infos[u].headers.get("date") if u in infos else None
            try:
                when = email.utils.parsedate_to_datetime(raw).date() if raw else None
            except (TypeError, ValueError, IndexError):
                when = None
            if when is None:
                when = datetime.fromtimestamp(folder.internal_date(u), timezone.utc).date()
        else:
            when = datetime.fromtimestamp(folder.internal_date(u), timezone.utc).date()
        d = day.date()
        if (op == "BEFORE" and when < d) or (op == "ON" and when == d) or (op == "SINCE" and when >= d):
            out.add(u)
    return out


# --- SORT and THREAD ------------------------------------------------------------------------------------


async def cmd_SORT(self: Session, cmd: p.Command) -> Any:
    return await _sort(self, cmd, by_uid=False)


async def cmd_UID_SORT(self: Session, cmd: p.Command) -> Any:
    return await _sort(self, cmd, by_uid=True)


async def _sort(self: Session, cmd: p.Command, by_uid: bool) -> Any:
    from . import sortthread

    view = self.view
    assert view is not None
    args = list(cmd.args)
    if len(args) < 3 or not isinstance(args[0], list):
        raise Bad("SORT needs criteria, a charset and search keys")
    crit = []
    reverse = False
    for c in args[0]:
        name = str(c).upper()
        if name == "REVERSE":
            reverse = True
            continue
        if name not in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"):
            raise Bad(f"unknown sort key {name[:20]}")
        crit.append((name, reverse))
        reverse = False
    if not crit:
        raise Bad("SORT needs a criterion")
    keys = _charset([p.Atom("CHARSET"), args[1], *args[2:]])
    tree = _parse_keys(keys, view)

    def work():
        uids, _ = _evaluate(self, tree)
        items = _sort_items(view, sorted(uids))
        return [it.uid for it in sortthread.sort(items, crit)]

    ordered = await self.io.blocking(work)
    numbers = ordered if by_uid else [view.seq_of(u) for u in ordered]
    self.io.write(b"* SORT" + b"".join(b" " + str(n).encode() for n in numbers if n) + b"\r\n")
    await self.announce(allow_expunge=by_uid)


async def cmd_THREAD(self: Session, cmd: p.Command) -> Any:
    return await _thread(self, cmd, by_uid=False)


async def cmd_UID_THREAD(self: Session, cmd: p.Command) -> Any:
    return await _thread(self, cmd, by_uid=True)


async def _thread(self: Session, cmd: p.Command, by_uid: bool) -> Any:
    from . import sortthread

    view = self.view
    assert view is not None
    args = list(cmd.args)
    if len(args) < 3:
        raise Bad("THREAD needs an algorithm, a charset and search keys")
    algo = str(args[0]).upper()
    if algo not in ("REFERENCES", "ORDEREDSUBJECT"):
        raise Bad(f"unsupported THREAD algorithm {algo[:20]}")
    keys = _charset([p.Atom("CHARSET"), args[1], *args[2:]])
    tree = _parse_keys(keys, view)

    def work():
        uids, _ = _evaluate(self, tree)
        items = _sort_items(view, sorted(uids))
        threads = sortthread.thread_references(items) if algo == "REFERENCES" else sortthread.thread_orderedsubject(items)
        key = (lambda it: it.uid) if by_uid else (lambda it: it.seq)
        return sortthread.format_threads(threads, key=key)

    body = await self.io.blocking(work)
    self.io.write(b"* THREAD " + body + b"\r\n" if body else b"* THREAD\r\n")
    await self.announce(allow_expunge=by_uid)


def _sort_items(view, uids: list[int]) -> list:
    from .sortthread import SortItem

    folder = view.folder
    infos = folder.infos(uids)
    items = []
    for u in uids:
        info = infos.get(u)
        if info is None:
            continue
        h = info.headers
        env = info.envelope
        items.append(
            SortItem(
                uid=u,
                seq=view.seq_of(u) or 0,
                arrival=folder.internal_date(u),
                size=view.messages[u].size,
                date=h.get("date"),
                subject=h.get("subject"),
                from_=env.from_,
                to=env.to,
                cc=env.cc,
                message_id=h.get("message-id"),
                in_reply_to=h.get("in-reply-to"),
                references=h.get("references"),
            )
        )
    return items



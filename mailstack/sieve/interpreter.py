"""Runs a validated script on one message: a tree walk over ``Node``s with
one dispatch table for commands and one for tests.

The result is the final list of actions (see ``actions``).  Anything that
stops a run half-way raises ``SieveRuntimeError``; the caller then files the
message in INBOX as if there were no script (RFC 5228 §2.10.6).

``include`` (RFC 6609) runs another script inside the same walk: it gets its
own variables (but for those both scripts declare ``global``), adds to the
same actions and the same implicit keep; ``return`` goes back to the
includer, ``stop`` ends the whole run.  Scripts come from a loader the
caller gives: the interpreter never reads files.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone, tzinfo
from typing import Callable, Iterator, Mapping, Sequence

from . import address, dates, match, variables
from .actions import Action, Discard, Ereject, FileInto, Keep, Redirect, Reject, Vacation
from .errors import SieveError, SieveRuntimeError
from .limits import DEFAULT_LIMITS, Limits
from .message import MessageView
from .validate import Node, Script

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
_ATOM_SPECIALS = set('(){ %*"]\\') | {chr(c) for c in range(32)} | {"\x7f"}


class _Stop(Exception):
    """The stop command: unwinds the walk."""


class _Return(Exception):
    """The return command: unwinds the current script only."""


# loader(location, name): location is "personal" or "global"; None when there
# is no such script; SieveError when it does not compile.
Loader = Callable[[str, str], "Script | None"]


def run(script: Script, message: MessageView, *, now: datetime | None = None,
        limits: Limits = DEFAULT_LIMITS, loader: Loader | None = None, name: str | None = None) -> list[Action]:
    """The actions the script takes on the message.

    ``now`` is the current time for currentdate (an aware datetime; its zone
    is the "local" zone of date tests); it defaults to the machine's clock.
    ``loader`` gives the scripts ``include`` names (without one, none
    exists); ``name`` is the script's own personal name, so that a script
    including itself is caught at once."""
    return _Run(script, message, now, limits, loader, name).execute()


class _Scope(Mapping[str, str]):
    """The variables a script sees: its own, and the global ones it declared."""

    def __init__(self, run: "_Run") -> None:
        self.run = run

    def _space(self, name: str) -> dict[str, str]:
        r = self.run
        return r.globals if name in r.global_names else r.variables

    def __getitem__(self, name: str) -> str:
        return self._space(name)[name]

    def get(self, name: str, default: str = "") -> str:  # type: ignore[override]
        return self._space(name).get(name, default)

    def __iter__(self) -> Iterator[str]:
        yield from self.run.variables
        yield from (n for n in self.run.global_names if n in self.run.globals)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Run:
    def __init__(self, script: Script, message: MessageView, now: datetime | None, limits: Limits,
                 loader: Loader | None = None, name: str | None = None) -> None:
        if now is None:
            now = datetime.now().astimezone()
        elif now.tzinfo is None:
            now = now.astimezone()
        self.script, self.msg, self.now, self.limits = script, message, now, limits
        self.local_zone: tzinfo = now.tzinfo or timezone.utc
        # The running script's own state, saved and restored around an include.
        self.uses_variables = "variables" in script.requires
        self.variables: dict[str, str] = {}
        self.global_names: set[str] = set()
        self.matches: tuple[str, ...] = ()
        # The whole run's.
        self.scope = _Scope(self)
        self.globals: dict[str, str] = {}
        self.variable_count = 0             # live variables in every namespace, against max_variables
        self.loader = loader
        self.stack: list[tuple[str, str]] = [("personal", name)] if name else []   # scripts running now
        self.included: set[tuple[str, str]] = set(self.stack)                       # for :once
        self.depth = 0
        self.includes = 0
        self.flags: list[str] = []          # RFC 5232 internal variable
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.budget = match.Budget(limits.match_seconds)
        self.node: Node | None = None

    # -- the walk ------------------------------------------------------------------

    def execute(self) -> list[Action]:
        try:
            self.block(self.script.commands)
        except (_Stop, _Return):
            pass
        except SieveRuntimeError as e:
            if not e.line and self.node is not None:
                e.line, e.col = self.node.line, self.node.col
            raise
        if self.implicit_keep:
            self.keep(self.flags_now(), explicit=False)
        return self.actions

    def block(self, nodes: Sequence[Node]) -> None:
        taken = False   # whether an if/elsif of the current chain ran its block
        for node in nodes:
            if node.name == "if":
                taken = self.test(node.tests[0])
                if taken:
                    self.block(node.block or ())
            elif node.name == "elsif":
                if not taken:
                    taken = self.test(node.tests[0])
                    if taken:
                        self.block(node.block or ())
            elif node.name == "else":
                if not taken:
                    self.block(node.block or ())
            else:
                self.node = node
                COMMANDS[node.name](self, node)

    def test(self, node: Node) -> bool:
        self.node = node
        return TESTS[node.name](self, node)

    def include(self, script: Script, key: tuple[str, str], at: Node) -> None:
        """Run an included script in its own namespace; its errors name it
        and are placed at the include command."""
        saved = self.script, self.uses_variables, self.variables, self.global_names, self.matches
        self.script, self.uses_variables = script, "variables" in script.requires
        self.variables, self.global_names, self.matches = {}, set(), ()
        self.stack.append(key)
        self.depth += 1
        try:
            self.block(script.commands)
        except _Return:
            pass
        except SieveRuntimeError as e:
            if not e.line and self.node is not None:
                e.line, e.col = self.node.line, self.node.col
            raise SieveRuntimeError(f"in {key[0]} script \"{key[1]}\": {e}", at.line, at.col) from None
        finally:
            self.variable_count -= len(self.variables)
            self.script, self.uses_variables, self.variables, self.global_names, self.matches = saved
            self.stack.pop()
            self.depth -= 1
        self.node = at

    # -- strings ---------------------------------------------------------------------

    def s(self, text: str) -> str:
        """A string with ${...} expanded when the script requires variables."""
        if not self.uses_variables:
            return text
        return variables.expand(text, self.scope, self.matches, self.limits.max_string_size)

    def sl(self, texts: Sequence[str]) -> list[str]:
        return [self.s(t) for t in texts]

    def compare(self, node: Node, values: Sequence[str], keys: Sequence[str]) -> bool:
        """The match type and comparator of a test applied to values and keys."""
        mtype, relation = node.tags.get("match", ("is", None))
        comparator = node.tags.get("comparator", ("comparator", match.DEFAULT_COMPARATOR))[1]
        result = match.test(values, self.sl(keys), mtype, relation, comparator, self.budget)
        if result.matched and result.groups is not None and self.uses_variables:
            self.matches = tuple(g[: self.limits.max_variable_size] for g in result.groups[:10])
        return result.matched

    # -- actions -------------------------------------------------------------------------

    def add(self, action: Action) -> None:
        if len(self.actions) >= self.limits.max_actions:
            raise SieveRuntimeError(f"too many actions (at most {self.limits.max_actions})")
        self.actions.append(action)

    def conflicts(self, kind: str) -> None:
        """RFC 5429 §2.2: reject and ereject exclude each other, every action
        that delivers the message (keep, fileinto, redirect) and vacation."""
        rejecting = [a for a in self.actions if isinstance(a, (Reject, Ereject))]
        if kind in ("reject", "ereject"):
            if rejecting:
                raise SieveRuntimeError(f"{kind} after {_action_name(rejecting[0])}: only one may be used")
            others = [a for a in self.actions if isinstance(a, (Keep, FileInto, Redirect, Vacation))]
            if others:
                raise SieveRuntimeError(f"{kind} cannot be combined with {_action_name(others[0])}")
        elif rejecting:
            raise SieveRuntimeError(f"{kind} cannot be combined with {_action_name(rejecting[0])}")

    def keep(self, flags: tuple[str, ...], explicit: bool = True) -> None:
        """Keep (or fileinto INBOX); the implicit keep never conflicts, it was cancelled."""
        for i, a in enumerate(self.actions):
            if isinstance(a, Keep):   # one copy in INBOX; its flags are merged
                self.actions[i] = Keep(_merge(a.flags, flags))
                return
        if explicit:
            self.conflicts("keep")
        self.add(Keep(flags))

    def set_variable(self, name: str, value: str) -> None:
        space = self.globals if name in self.global_names else self.variables
        if name not in space:
            if self.variable_count >= self.limits.max_variables:
                raise SieveRuntimeError(f"too many variables (at most {self.limits.max_variables})")
            self.variable_count += 1
        space[name] = value[: self.limits.max_variable_size]

    def get_variable(self, name: str) -> str:
        return self.scope.get(name, "")

    def flags_now(self, node: Node | None = None) -> tuple[str, ...]:
        """The :flags of an action, else the internal variable (RFC 5232 §5)."""
        if node is not None and "flags" in node.tags:
            return tuple(_flag_list(self.sl(node.tags["flags"])))
        return tuple(self.flags)


# -- commands ---------------------------------------------------------------------------


def _stop(r: _Run, node: Node) -> None:
    raise _Stop


def _keep(r: _Run, node: Node) -> None:
    r.implicit_keep = False
    r.keep(r.flags_now(node))


def _discard(r: _Run, node: Node) -> None:
    r.implicit_keep = False
    if Discard() not in r.actions:
        r.add(Discard())


def _fileinto(r: _Run, node: Node) -> None:
    mailbox = r.s(node.args[0])
    if not mailbox:
        raise SieveRuntimeError("fileinto: empty mailbox name")
    copy = bool(node.tags.get("copy"))
    if not copy:
        r.implicit_keep = False
    flags = r.flags_now(node)
    if mailbox.upper() == "INBOX":
        r.keep(flags)
        return
    r.conflicts("fileinto")
    for i, a in enumerate(r.actions):
        if isinstance(a, FileInto) and a.mailbox == mailbox:   # one copy per mailbox (§2.10.3)
            r.actions[i] = FileInto(mailbox, _merge(a.flags, flags), a.create or bool(node.tags.get("create")),
                                    a.copy and copy)
            return
    r.add(FileInto(mailbox, flags, bool(node.tags.get("create")), copy))


def _redirect(r: _Run, node: Node) -> None:
    text = r.s(node.args[0])
    addr = address.parse_single(text)
    if addr is None:
        raise SieveRuntimeError(f"redirect: invalid address \"{text[:200]}\"")
    copy = bool(node.tags.get("copy"))
    if not copy:
        r.implicit_keep = False
    r.conflicts("redirect")
    for i, a in enumerate(r.actions):
        if isinstance(a, Redirect) and a.address.lower() == addr.lower():
            r.actions[i] = Redirect(a.address, a.copy and copy)
            return
    if sum(isinstance(a, Redirect) for a in r.actions) >= r.limits.max_redirects:
        raise SieveRuntimeError(f"too many redirects (at most {r.limits.max_redirects})")
    r.add(Redirect(addr, copy))


def _reject(r: _Run, node: Node) -> None:
    r.conflicts(node.name)
    r.implicit_keep = False
    r.add((Ereject if node.name == "ereject" else Reject)(r.s(node.args[0])))


def _vacation(r: _Run, node: Node) -> None:
    if any(isinstance(a, Vacation) for a in r.actions):
        raise SieveRuntimeError("vacation used twice")
    r.conflicts("vacation")
    tags = node.tags
    reason = r.s(node.args[0])
    subject = r.s(tags["subject"]) if "subject" in tags else None
    sender = r.s(tags["from"]) if "from" in tags else None
    addresses = tuple(r.sl(tags.get("addresses", ())))
    unit, amount = tags.get("period", ("days", 7))
    seconds = amount if unit == "seconds" else max(1, amount) * 86400   # RFC 5230 §4.1: at least a day
    handle = r.s(tags["handle"]) if "handle" in tags else _default_handle(reason, subject, sender, "mime" in tags)
    r.add(Vacation(reason, subject, sender, addresses, seconds, "mime" in tags, handle))


def _default_handle(reason: str, subject: str | None, sender: str | None, mime: bool) -> str:
    """RFC 5230 §4.2: without :handle, the same reply text is the same handle."""
    digest = hashlib.sha256("\0".join((reason, subject or "", sender or "", str(mime))).encode("utf-8", "replace"))
    return digest.hexdigest()[:32]


def _set(r: _Run, node: Node) -> None:
    name = node.args[0].lower()
    modifiers = [v[0] for k, v in node.tags.items() if isinstance(v, tuple)] + \
                [k for k, v in node.tags.items() if v is True]
    r.set_variable(name, variables.apply_modifiers(r.s(node.args[1]), modifiers))


def _flag_command(operation: Callable[[list[str], list[str]], list[str]]) -> Callable[[_Run, Node], None]:
    def command(r: _Run, node: Node) -> None:
        given = _flag_list(r.sl(node.args[-1]))
        if len(node.args) == 2:      # a user variable holds the flags
            name = r.s(node.args[0]).lower()
            current = _flag_list([r.get_variable(name)])
            r.set_variable(name, " ".join(operation(current, given)))
        else:
            r.flags = operation(r.flags, given)
    return command


def _add_flags(current: list[str], given: list[str]) -> list[str]:
    return list(_merge(tuple(current), tuple(given)))


def _remove_flags(current: list[str], given: list[str]) -> list[str]:
    drop = {f.lower() for f in given}
    return [f for f in current if f.lower() not in drop]


def _include(r: _Run, node: Node) -> None:
    location, name = node.tags.get("location", ("personal", True))[0], node.args[0]
    key = (location, name)
    if node.tags.get("once") and key in r.included:
        return
    if key in r.stack:
        raise SieveRuntimeError(f"include: {location} script \"{name}\" would include itself")
    if r.depth >= r.limits.max_include_depth:
        raise SieveRuntimeError(f"include: nested too deep (at most {r.limits.max_include_depth} levels)")
    if r.includes >= r.limits.max_includes:
        raise SieveRuntimeError(f"include: too many includes (at most {r.limits.max_includes} per message)")
    r.includes += 1
    try:
        script = r.loader(location, name) if r.loader is not None else None
    except SieveError as e:
        raise SieveRuntimeError(f"include: {location} script \"{name}\" does not compile: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SieveRuntimeError(f"include: {location} script \"{name}\" cannot be read: {e}") from None
    if script is None:
        if node.tags.get("optional"):
            return
        raise SieveRuntimeError(f"include: no {location} script named \"{name}\"")
    r.included.add(key)
    r.include(script, key, node)


def _return(r: _Run, node: Node) -> None:
    raise _Return


def _global(r: _Run, node: Node) -> None:
    for name in node.args[0]:
        name = name.lower()
        if name in r.global_names:
            continue
        if name in r.variables:   # RFC 6609 §3.3
            raise SieveRuntimeError(f"global: \"{name}\" was already set in this script")
        r.global_names.add(name)


COMMANDS: dict[str, Callable[[_Run, Node], None]] = {
    "require": lambda r, node: None,
    "stop": _stop,
    "keep": _keep,
    "discard": _discard,
    "fileinto": _fileinto,
    "redirect": _redirect,
    "reject": _reject,
    "ereject": _reject,
    "vacation": _vacation,
    "set": _set,
    "setflag": _flag_command(lambda current, given: given),
    "addflag": _flag_command(_add_flags),
    "removeflag": _flag_command(_remove_flags),
    "include": _include,
    "return": _return,
    "global": _global,
}


# -- tests ------------------------------------------------------------------------------


def _indexed(node: Node, values: Sequence[str]) -> Sequence[str]:
    """RFC 5260 §6 :index N [:last]: only the Nth field (counted from the end with :last)."""
    if "index" not in node.tags:
        return values
    n = node.tags["index"]
    if n > len(values):
        return []
    return [values[-n] if node.tags.get("last") else values[n - 1]]


def _header(r: _Run, node: Node) -> bool:
    values: list[str] = []
    for name in r.sl(node.args[0]):
        values.extend(_indexed(node, r.msg.header(name)))
    return r.compare(node, values, node.args[1])


def _address_values(node: Node, specs: Sequence[str]) -> list[str]:
    part = node.tags.get("part", ("all", None))[0]
    out = []
    for spec in specs:
        value = address.part(spec, part)
        if value is not None:
            out.append(value)
    return out


def _address(r: _Run, node: Node) -> bool:
    specs: list[str] = []
    for name in r.sl(node.args[0]):
        for value in _indexed(node, r.msg.raw_header(name)):
            specs.extend(address.addr_specs(value))
    return r.compare(node, _address_values(node, specs), node.args[1])


def _envelope(r: _Run, node: Node) -> bool:
    values: list[str] = []
    for part in r.sl(node.args[0]):
        part = part.lower()
        if part == "from":
            sender = r.msg.envelope_from
            if not sender:          # RFC 5228 §5.4: the null path is "" whatever the part
                values.append("")
                continue
            values.extend(_address_values(node, [sender]))
        elif part == "to":
            values.extend(_address_values(node, [r.msg.envelope_to]))
        else:
            raise SieveRuntimeError(f"unknown envelope part \"{part[:100]}\"")
    return r.compare(node, values, node.args[1])


def _exists(r: _Run, node: Node) -> bool:
    return all(r.msg.raw_header(name) for name in r.sl(node.args[0]))


def _size(r: _Run, node: Node) -> bool:
    which, limit = node.tags["size"]
    return r.msg.size > limit if which == "over" else r.msg.size < limit


def _body(r: _Run, node: Node) -> bool:
    transform, types = node.tags.get("transform", ("text", True))
    texts = r.msg.body(transform, r.sl(types) if transform == "content" else ())
    return r.compare(node, texts, node.args[0])


def _string(r: _Run, node: Node) -> bool:
    sources = r.sl(node.args[0])
    if node.tags.get("match", ("is",))[0] == "count":
        sources = [s for s in sources if s]   # RFC 5229 §5: :count counts non-empty strings
    return r.compare(node, sources, node.args[1])


def _hasflag(r: _Run, node: Node) -> bool:
    if len(node.args) == 2:
        flags = _flag_list([r.get_variable(r.s(n).lower()) for n in node.args[0]])
    else:
        flags = list(r.flags)
    return r.compare(node, flags, node.args[-1])


def _zone(r: _Run, node: Node) -> tzinfo | None:
    """The zone of a date test: :zone, else None for :originalzone, else local."""
    which, value = node.tags.get("zone", ("", None))
    if which == "originalzone":
        return None
    if which == "zone":
        zone = dates.parse_zone(r.s(value))
        if zone is None:
            raise SieveRuntimeError(f"bad time zone \"{r.s(value)[:50]}\"")
        return zone
    return r.local_zone


def _date_part(r: _Run, text: str) -> str:
    part = r.s(text).lower()
    if part not in dates.DATE_PARTS:
        raise SieveRuntimeError(f"unknown date part \"{part[:50]}\"")
    return part


def _date(r: _Run, node: Node) -> bool:
    zone = _zone(r, node)
    part = _date_part(r, node.args[1])
    values = []
    for raw in _indexed(node, r.msg.raw_header(r.s(node.args[0]))):
        moment = dates.parse_date(raw)
        if moment is not None:
            values.append(dates.date_part(moment if zone is None else moment.to_zone(zone), part))
    return r.compare(node, values, node.args[2])


def _currentdate(r: _Run, node: Node) -> bool:
    zone = _zone(r, node)
    moment = dates.Moment(r.now)
    part = _date_part(r, node.args[0])
    return r.compare(node, [dates.date_part(moment if zone is None else moment.to_zone(zone), part)], node.args[1])


def _mailboxexists(r: _Run, node: Node) -> bool:
    return all(r.msg.mailbox_exists(name) for name in r.sl(node.args[0]))


TESTS: dict[str, Callable[[_Run, Node], bool]] = {
    "true": lambda r, node: True,
    "false": lambda r, node: False,
    "not": lambda r, node: not r.test(node.tests[0]),
    "anyof": lambda r, node: any(r.test(t) for t in node.tests),
    "allof": lambda r, node: all(r.test(t) for t in node.tests),
    "header": _header,
    "address": _address,
    "envelope": _envelope,
    "exists": _exists,
    "size": _size,
    "body": _body,
    "string": _string,
    "hasflag": _hasflag,
    "date": _date,
    "currentdate": _currentdate,
    "mailboxexists": _mailboxexists,
}


# -- flags -----------------------------------------------------------------------------------


def _flag_list(texts: Sequence[str]) -> list[str]:
    """Flags from strings of space-separated flags: system flags spelled the
    standard way, no duplicates (case-insensitive), invalid ones dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        for flag in text.split():
            if flag.startswith("\\"):
                flag = SYSTEM_FLAGS.get(flag.lower(), "")
            elif any(c in _ATOM_SPECIALS for c in flag):
                flag = ""
            if flag and flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


def _merge(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    """a then the flags of b not in it (flags compare case-insensitively)."""
    out, seen = list(a), {f.lower() for f in a}
    for f in b:
        if f.lower() not in seen:
            seen.add(f.lower())
            out.append(f)
    return tuple(out)


def _action_name(a: Action) -> str:
    return type(a).__name__.lower()

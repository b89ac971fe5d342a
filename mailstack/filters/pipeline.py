"""The configured filters, run once per message between the spool and delivery.

Filters run in the order of ``[[filters]]``; the first reject, temporary
failure or quarantine ends the run, and the headers of every tagging filter
are gathered.  Each filter has a time limit; a filter that fails or runs out
of time counts as its ``fail`` choice: ``tempfail`` (451 4.7.1, the sender
retries, nothing is lost) or ``accept``.  Every verdict is one log line.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable

from ..config import Config, FilterConfig
from . import ACTIONS, Envelope, FilterError, Message, Verdict

log = logging.getLogger("mailstack.filters")

BUILTIN = {
    "clamav": "mailstack.filters.clamav:ClamAV",
    "spamassassin": "mailstack.filters.spamassassin:SpamAssassin",
}
GROUP = "mailstack.filters"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,75}$")


def _factory(name: str) -> Callable[[dict], Any]:
    target = BUILTIN.get(name)
    if target is None:
        found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
        if not found:
            raise FilterError(f"unknown filter {name!r}: not built in (clamav, spamassassin) and no package declares it in the {GROUP} entry points")
        return found[0].load()
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Configured:
    filter: Any
    name: str
    timeout: float
    fail: str  # tempfail | accept
    skip_authenticated: bool


def load(cfg: Config) -> list[Configured]:
    """Instantiate every configured filter; FilterError names the one that cannot be."""
    out = []
    for i, fc in enumerate(cfg.filters):
        out.append(_configure(fc, i))
    return out


def _configure(fc: FilterConfig, i: int) -> Configured:
    try:
        instance = _factory(fc.name)(dict(fc.options))
    except FilterError as e:
        raise FilterError(f"filters[{i}] ({fc.name}): {e}") from None
    except Exception as e:  # noqa: BLE001 (a third-party factory: report it in one line)
        raise FilterError(f"filters[{i}] ({fc.name}): cannot be set up: {type(e).__name__}: {e}") from None
    if not callable(getattr(instance, "check", None)):
        raise FilterError(f"filters[{i}] ({fc.name}): the object has no check(message, envelope) method")
    fail = fc.fail or getattr(instance, "default_fail", "tempfail")
    if fail not in ("tempfail", "accept"):
        fail = "tempfail"
    return Configured(instance, fc.name, fc.timeout, fail, fc.skip_authenticated)


@dataclass
class Outcome:
    """What the filters decided for one message, all together."""

    action: str = "accept"  # accept | reject | tempfail | quarantine
    reply: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    spam: bool = False
    reason: str = ""  # of the deciding filter (quarantine, reject)
    by: str = ""  # the deciding filter
    results: list[str] = field(default_factory=list)  # name=result, for the message's log line


def _clean_header(name: str, value: str) -> tuple[str, str] | None:
    if not _HEADER_NAME.match(name):
        return None
    value = " ".join(str(value).split())  # one line, no control characters from a scanner
    value = "".join(c for c in value if c.isprintable())[:900]
    return name, value


def _sane(v: Verdict, default_tempfail: str) -> Verdict:
    """A verdict the daemon can act on: a known action, a reply of the right class."""
    if not isinstance(v, Verdict) or v.action not in ACTIONS:
        raise TypeError(f"returned {v!r}, not a Verdict")
    if v.action == "reject" and not re.match(r"^5\d\d [245]\.\d{1,3}\.\d{1,3} \S", v.reply or ""):
        return Verdict.reject("550 5.7.1 Message refused", reason=v.reason)
    if v.action == "tempfail" and not re.match(r"^4\d\d [245]\.\d{1,3}\.\d{1,3} \S", v.reply or ""):
        return Verdict.tempfail(default_tempfail, reason=v.reason)
    if any(c in (v.reply or "") for c in "\r\n"):
        return Verdict(v.action, " ".join(v.reply.split()), v.headers, v.spam, v.score, v.reason)
    return v


class Pipeline:
    def __init__(self, filters: list[Configured], run_blocking: Callable[..., Awaitable[Any]]):
        self.filters = filters
        self._run_blocking = run_blocking

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def run(self, message: Message, envelope: Envelope) -> Outcome:
        out = Outcome()
        for c in self.filters:
            if c.skip_authenticated and envelope.login:
                continue
            start = time.monotonic()
            try:
                if inspect.iscoroutinefunction(c.filter.check):
                    call = c.filter.check(message, envelope)
                else:
                    call = self._run_blocking(c.filter.check, message, envelope)
                v = _sane(await asyncio.wait_for(call, c.timeout), "451 4.7.1 Message could not be scanned; try again later")
            except Exception as e:  # noqa: BLE001 (a scanner down, slow or buggy: the configured choice)
                why = "timed out" if isinstance(e, TimeoutError) else f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                if c.fail == "tempfail":
                    v = Verdict.tempfail(reason=f"scanner {why}")
                else:
                    v = Verdict.accept(reason=f"scanner {why}; accepted unscanned")
            took = time.monotonic() - start
            log.info(
                "filter id=%s filter=%s result=%s%s time=%.3f%s",
                envelope.queue_id, c.name, v.action, " spam" if v.spam else "", took,
                f" reason={v.reason[:200]}" if v.reason else "",
            )
            out.results.append(f"{c.name}={v.action}{'+spam' if v.spam else ''}")
            for name, value in v.headers:
                h = _clean_header(name, value)
                if h:
                    out.headers.append(h)
            out.spam = out.spam or v.spam
            if v.action in ("reject", "tempfail", "quarantine"):
                out.action, out.reply, out.reason, out.by = v.action, v.reply, v.reason, c.name
                break
        return out


def header_bytes(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{n}: {v}\r\n".encode("utf-8", "replace") for n, v in headers)

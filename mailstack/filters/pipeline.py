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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.header import Header
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable

from .. import metrics
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
    strip: set[str] = field(default_factory=set)  # lowercase header names to remove from the message


def _clean_header(name: object, value: object) -> tuple[str, str] | None:
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        return None
    text = " ".join(str(value).split())  # one line, whatever a scanner sends
    text = "".join(c for c in text if c.isprintable())[:900]
    if not text.isascii():  # RFC 2047, so the header stays 7-bit
        text = Header(text, "utf-8").encode(maxlinelen=10000).replace("\n", " ")
    return name, text


_REPLY = re.compile(r"^[45]\d\d [245]\.\d{1,3}\.\d{1,3} [ -~]+$")


def _sane(v: object) -> Verdict:
    """A verdict the daemon can act on: a known action, an ASCII one-line reply
    of the right class, clean headers.  Anything else raises (the fail choice)."""
    if not isinstance(v, Verdict) or v.action not in ACTIONS:
        raise TypeError(f"returned {v!r:.100}, not a Verdict")
    reply = " ".join(str(v.reply or "").split())
    if v.action == "reject" and not (reply.startswith("5") and _REPLY.match(reply)):
        reply = "550 5.7.1 Message refused"
    if v.action == "tempfail" and not (reply.startswith("4") and _REPLY.match(reply)):
        reply = "451 4.7.1 Message could not be scanned; try again later"
    headers = tuple(h for h in (_clean_header(*pair) for pair in v.headers if isinstance(pair, tuple) and len(pair) == 2) if h)
    reason = " ".join(str(v.reason).split())[:300]
    return Verdict(v.action, reply, headers, bool(v.spam), v.score if isinstance(v.score, (int, float)) else None, reason)


def _guarded(check: Callable, message: Message, envelope: Envelope) -> tuple[bool, Any]:
    """Runs in a filter thread: whatever the filter raises (SystemExit
    included) comes back as a value instead of ending the thread or the daemon."""
    try:
        return True, check(message, envelope)
    except BaseException as e:  # noqa: BLE001
        return False, e


class FilterFailed(Exception):
    """The filter raised, timed out, or could not run: its fail choice applies."""


async def _contained(aw: Awaitable[Any]) -> Any:
    """SystemExit or KeyboardInterrupt from a filter's coroutine would stop
    the event loop itself: caught here, inside the task."""
    try:
        return await aw
    except (SystemExit, KeyboardInterrupt) as e:
        raise FilterFailed(f"{type(e).__name__}: {e}") from None


async def _bounded(aw: Awaitable[Any], timeout: float) -> Any:
    """Await a filter's coroutine for at most ``timeout``; one that ignores
    cancellation is abandoned (its end is collected), never waited for."""
    task = asyncio.ensure_future(_contained(aw))
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError
    try:
        return task.result()
    except asyncio.CancelledError:
        raise FilterFailed("cancelled itself") from None


FILTER_THREADS = 8  # blocking filters at once, per worker; a stuck one keeps its thread


class Pipeline:
    """Blocking filters run in threads of their own, never those of delivery:
    a stuck scanner can hold its threads, not the daemon.  When none is
    free, the filter counts as failed at once (its fail choice)."""

    def __init__(self, filters: list[Configured], threads: int = FILTER_THREADS):
        self.filters = filters
        self._threads = threads
        self._free = threads
        self._executor: ThreadPoolExecutor | None = None

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def _call(self, c: Configured, message: Message, envelope: Envelope) -> Any:
        start = time.monotonic()
        check = c.filter.check
        if inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(getattr(check, "__call__", None)):
            try:
                call = check(message, envelope)
            except Exception as e:  # raised before its first await
                raise FilterFailed(f"{type(e).__name__}: {e}") from None
            return await _bounded(call, c.timeout)
        if self._free <= 0:
            raise FilterFailed("every filter thread is busy")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="filter")
        self._free -= 1
        fut = asyncio.get_running_loop().run_in_executor(self._executor, _guarded, check, message, envelope)
        fut.add_done_callback(self._thread_done)  # the thread's slot comes back when it ends, not at the timeout
        done, _ = await asyncio.wait({fut}, timeout=c.timeout)
        if not done:
            raise TimeoutError
        ok, value = fut.result()
        if not ok:
            raise FilterFailed(f"{type(value).__name__}: {value}")
        if inspect.isawaitable(value):  # an async check the detection missed (a decorator...)
            return await _bounded(value, c.timeout - (time.monotonic() - start))
        return value

    def _thread_done(self, _fut: asyncio.Future) -> None:
        self._free += 1

    async def run(self, message: Message, envelope: Envelope) -> Outcome:
        out = Outcome()
        for c in self.filters:
            owned = getattr(c.filter, "owns_headers", ())
            out.strip.update(n.lower() for n in owned if isinstance(n, str) and _HEADER_NAME.match(n))
        for c in self.filters:
            if c.skip_authenticated and envelope.login:
                continue
            start = time.monotonic()
            try:
                v = _sane(await self._call(c, message, envelope))
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
                f" reason={v.reason}" if v.reason else "",
            )
            out.results.append(f"{c.name}={v.action}{'+spam' if v.spam else ''}")
            metrics.FILTER_VERDICTS.labels(c.name, v.action + ("+spam" if v.spam else "")).inc()
            out.headers.extend(v.headers)
            out.spam = out.spam or v.spam
            if v.action in ("reject", "tempfail", "quarantine"):
                out.action, out.reply, out.reason, out.by = v.action, v.reply, v.reason, c.name
                break
        return out

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def header_bytes(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{n}: {v}\r\n".encode("utf-8", "replace") for n, v in headers)

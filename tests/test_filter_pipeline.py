"""The filter pipeline against misbehaving filters: stuck, crashing, lying.

Pure logic (no sockets): the pipeline's promise is that whatever a filter
does, the message gets the filter's ``fail`` choice and the daemon goes on.
"""

from __future__ import annotations

import asyncio
import functools
import io
import threading
import time

import pytest

from mailstack.filters import Envelope, Verdict
from mailstack.filters.pipeline import Configured, Pipeline

ENV = Envelope("0" * 20, "mx", "127.0.0.1", "client.test", None, "a@b.test", ("c@d.test",))


class Msg:
    size = 10

    def open(self):
        return io.BytesIO(b"Subject: x\r\n\r\nbody\r\n")


def run(pipeline: Pipeline):
    return asyncio.run(pipeline.run(Msg(), ENV))


def configured(check, fail: str = "tempfail", timeout: float = 0.5) -> Configured:
    f = type("F", (), {"name": "t"})()
    f.check = check  # an instance attribute: called as is
    return Configured(f, "t", timeout, fail, False)


def test_a_stuck_blocking_filter_keeps_its_thread_and_the_next_fails_at_once():
    release = threading.Event()

    def stuck(message, envelope):
        release.wait(10)
        return Verdict.accept()

    p = Pipeline([configured(stuck, "accept", 0.2)], threads=1)

    async def two():
        first = await p.run(Msg(), ENV)
        t = time.monotonic()
        second = await p.run(Msg(), ENV)
        return first, second, time.monotonic() - t

    try:
        first, second, took = asyncio.run(two())
    finally:
        release.set()
        p.close()
    assert first.action == "accept" and first.results == ["t=accept"]
    assert second.action == "accept" and took < 0.2  # no wait for a thread: the fail choice at once


@pytest.mark.parametrize("fail, action", [("tempfail", "tempfail"), ("accept", "accept")])
def test_system_exit_in_a_blocking_filter(fail, action):
    def boom(message, envelope):
        raise SystemExit(2)

    out = run(Pipeline([configured(boom, fail)]))
    assert out.action == action
    if action == "tempfail":
        assert out.reply.startswith("451 4.7.1")


def test_system_exit_in_an_async_filter():
    async def boom(message, envelope):
        await asyncio.sleep(0)
        raise SystemExit(2)

    assert run(Pipeline([configured(boom, "tempfail")])).action == "tempfail"


def test_an_async_filter_that_ignores_cancellation_is_abandoned():
    async def stubborn(message, envelope):
        for _ in range(20):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass
        return Verdict.accept()

    async def one():
        t = time.monotonic()
        out = await Pipeline([configured(stubborn, "tempfail", 0.2)]).run(Msg(), ENV)
        return out, time.monotonic() - t

    out, took = asyncio.run(one())
    assert out.action == "tempfail" and took < 1.5  # not the filter's 2 s


@pytest.mark.parametrize("verdict", [
    "accept",
    Verdict("maybe"),
    Verdict.tag([("X-Bad: header", "v")]),  # bad name: dropped, not an error
])
def test_garbage_verdicts(verdict):
    out = run(Pipeline([configured(lambda m, e: verdict, "tempfail")]))
    if isinstance(verdict, Verdict) and verdict.action == "tag":
        assert out.action == "accept" and out.headers == []
    else:
        assert out.action == "tempfail"


def test_headers_are_one_line_ascii_and_replies_ascii():
    def lying(message, envelope):
        return Verdict.tag([("X-Scan", "trouvé\r\nBcc: victim@x.test")])

    out = run(Pipeline([configured(lying)]))
    ((name, value),) = out.headers
    assert name == "X-Scan" and value.isascii() and "\n" not in value and value.startswith("=?utf-8?")
    out = run(Pipeline([configured(lambda m, e: Verdict.reject("550 5.7.1 Virus trouvé"))]))
    assert out.reply == "550 5.7.1 Message refused"


def test_async_checks_the_detection_would_miss_are_awaited():
    class Callable:
        async def __call__(self, message, envelope):
            return Verdict.tag([("X-Callable", "yes")])

    def plain_decorator(fn):
        @functools.wraps(fn)
        def wrapper(*a):
            return fn(*a)
        return wrapper

    @plain_decorator
    async def decorated(message, envelope):
        return Verdict.tag([("X-Decorated", "yes")])

    for check, header in ((Callable(), "X-Callable"), (decorated, "X-Decorated")):
        out = run(Pipeline([configured(check, "tempfail", 1.0)]))
        assert out.action == "accept" and out.headers == [(header, "yes")], out

"""SpamAssassin through spamd: tag spam for the Junk folder, optionally refuse the worst.

The message goes to spamd with the SYMBOLS command (one scan gives the
verdict, the score, the threshold and the rules that fired) through the
``aiospamc`` library, so the SPAMC protocol is not ours to keep.  Like
``spamc``, messages larger than ``max_size`` are not sent at all: spam is
small, and spamd's memory and time grow with the message.  That bound is
also why reading the message into memory here does not break "stream,
never slurp".

Options (``[[filters]] name = "spamassassin"``, ``options = {...}``):

``host`` (``"127.0.0.1"``) and ``port`` (783), or ``socket`` (a Unix socket path)
    where spamd listens.
``max_size`` (512000)
    bytes; a larger message is accepted untagged without asking spamd.
``reject_score`` (0 = never)
    a score at or above it refuses the message at DATA (550 5.7.1) instead
    of filing it in Junk.
``user``
    the spamd user whose preferences apply (spamc's ``-u``); spamd's default
    otherwise.

A scanner that is down, refuses the connection or answers garbage raises:
the pipeline then applies the filter's ``fail`` choice, by default
``accept`` (a dead spam scanner should not stop mail).
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import aiospamc
from aiospamc.exceptions import ClientException
from aiospamc.responses import ResponseException

from . import Envelope, FilterError, Message, Verdict

REJECT_REPLY = "550 5.7.1 Message refused as spam"
_USER = re.compile(r"^[!-~]{1,128}$")  # printable ASCII, no space: it goes on a protocol header line
_RULE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TESTS_MAX = 600  # characters of rule names in X-Spam-Status, to keep the header one sane line
_OPTIONS = {"host", "port", "socket", "max_size", "reject_score", "user"}


class SpamdError(Exception):
    """spamd could not be reached or did not answer as it should (one line, for the log)."""


def _int(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FilterError(f"{key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _score(value: float) -> str:
    """SpamAssassin's own one-decimal form; never "-0.0"."""
    return f"{round(value, 1) + 0.0:.1f}"


class SpamAssassin:
    name = "spamassassin"
    default_fail = "accept"
    owns_headers = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Flag")

    def __init__(self, options: dict[str, Any]):
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise FilterError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}")
        self.socket: Path | None = None
        if "socket" in options:
            if "host" in options or "port" in options:
                raise FilterError("give either socket or host/port, not both")
            raw = options["socket"]
            if not isinstance(raw, str) or not raw.startswith("/"):
                raise FilterError(f"socket must be an absolute path to spamd's Unix socket, not {raw!r}")
            self.socket = Path(raw)
        self.host = options.get("host", "127.0.0.1")
        if not isinstance(self.host, str) or not self.host or any(c.isspace() for c in self.host):
            raise FilterError(f"host must be a host name or IP address, not {self.host!r}")
        self.port = _int(options, "port", 783, 1, 65535)
        self.max_size = _int(options, "max_size", 512000, 1, 1 << 30)
        reject = options.get("reject_score", 0)
        if isinstance(reject, bool) or not isinstance(reject, (int, float)) or not math.isfinite(reject) or reject < 0:
            raise FilterError(f"reject_score must be a number >= 0 (0 = never reject), not {reject!r}")
        self.reject_score = float(reject)
        self.user: str | None = options.get("user")
        if self.user is not None and not (isinstance(self.user, str) and _USER.match(self.user)):
            raise FilterError(f"user must be a spamd user name (printable ASCII, no spaces), not {self.user!r}")
        self.where = str(self.socket) if self.socket else f"{self.host}:{self.port}"

    def _read(self, message: Message) -> bytes | None:
        """The message, or None when it is over max_size (checked on the bytes too, not only the spool's word)."""
        with message.open() as f:
            data = f.read(self.max_size + 1)
        return None if len(data) > self.max_size else data

    async def check(self, message: Message, envelope: Envelope) -> Verdict:
        if message.size > self.max_size:
            return Verdict.accept(reason=f"not scanned: {message.size} bytes > max_size")
        data = await asyncio.to_thread(self._read, message)
        if data is None:
            return Verdict.accept(reason="not scanned: over max_size")
        try:
            response = await aiospamc.symbols(
                data, host=self.host, port=self.port, socket_path=self.socket, user=self.user
            )
        except ClientException as e:  # connection refused, timeout, unparsable answer
            cause = e.__cause__ or e
            raise SpamdError(f"spamd at {self.where}: {type(e).__name__}: {' '.join(str(cause).split())[:200]}") from e
        except ResponseException as e:  # spamd answered with an EX_* error code
            raise SpamdError(f"spamd at {self.where} answered {e.code} {' '.join(str(e).split())[:200]}") from e
        spam = response.headers.spam
        if spam is None:
            raise SpamdError(f"spamd at {self.where} answered without a Spam header")
        score, required = _score(spam.score), _score(spam.threshold)
        if self.reject_score > 0 and spam.score >= self.reject_score:
            return Verdict.reject(REJECT_REPLY, reason=f"score {score}")
        status = f"{'Yes' if spam.value else 'No'}, score={score} required={required}"
        tests = [t for t in response.body.decode("ascii", "replace").strip().split(",") if _RULE.match(t)]
        if tests:
            listed = ",".join(tests)
            if len(listed) > _TESTS_MAX:
                listed = listed[: listed.rfind(",", 0, _TESTS_MAX)] + ",..."
            status += f" tests={listed}"
        headers = [("X-Spam-Status", status), ("X-Spam-Score", score)]
        if spam.value:
            headers.append(("X-Spam-Flag", "YES"))
        return Verdict.tag(headers, spam=spam.value, score=spam.score + 0.0, reason=f"score {score}")  # + 0.0: no -0.0


__all__ = ["REJECT_REPLY", "SpamAssassin", "SpamdError"]

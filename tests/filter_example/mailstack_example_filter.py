"""An example mailstack filter: its verdict is chosen by a word in the Subject.

Words: REJECT-ME, TEMPFAIL-ME, QUARANTINE-ME, SPAM-ME, and the configured
``crash_word`` / ``slow_word`` (to show the ``fail`` choice and time limits).
"""

from __future__ import annotations

import time

from mailstack.filters import Envelope, FilterError, Message, Verdict


class ExampleFilter:
    name = "example"
    default_fail = "tempfail"
    owns_headers = ("X-Example-Filter",)  # a sender's copy is removed

    def __init__(self, options: dict):
        unknown = set(options) - {"crash_word", "slow_word", "tag"}
        if unknown:
            raise FilterError(f"unknown option {sorted(unknown)[0]!r}")
        self.crash = options.get("crash_word", "CRASH-ME")
        self.slow = options.get("slow_word", "SLOW-ME")
        self.tag = options.get("tag", "checked")

    def check(self, message: Message, envelope: Envelope) -> Verdict:
        with message.open() as f:
            head = f.read(65536)
        subject = next((line for line in head.split(b"\r\n") if line.lower().startswith(b"subject:")), b"").decode()
        if self.crash in subject:
            raise RuntimeError("the example scanner crashed")
        if self.slow in subject:
            time.sleep(5)
        if "REJECT-ME" in subject:
            return Verdict.reject("550 5.7.1 Refused by the example filter", reason="asked to")
        if "TEMPFAIL-ME" in subject:
            return Verdict.tempfail("451 4.7.1 Example filter busy", reason="asked to")
        if "QUARANTINE-ME" in subject:
            return Verdict.quarantine("asked to", [("X-Example-Filter", "quarantined")])
        spam = "SPAM-ME" in subject
        return Verdict.tag([("X-Example-Filter", f"{self.tag}; size={message.size}; via={envelope.listener}")],
                           spam=spam, score=9.0 if spam else 0.0)

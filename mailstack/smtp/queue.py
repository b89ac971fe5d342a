"""The durable queue: accepted mail that could not be delivered at once.

An entry is two files in SPOOL/queue: ``ID.eml``, the message exactly as it
will be sent (our Received header included), and ``ID.json``, the envelope
and per-recipient state.  The message is fsynced and linked in first, the
envelope written atomically last, then the directory fsynced: an entry
exists, whole, once ``add`` returns, and only then does the daemon answer
250.  An ``.eml`` without its ``.json`` is the trace of a crash before the
acknowledgement and is removed.

Remote recipients wait here for the outbound runner (issue 6); local ones
land here only when their delivery failed after others succeeded, so the
message is neither lost nor delivered twice when the client retries.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_atomic


@dataclass
class Recipient:
    address: str
    local: bool  # deliver into the store rather than over SMTP
    status: str = "pending"  # pending | delivered | failed
    reason: str = ""


@dataclass
class Entry:
    id: str
    sender: str  # "" for the null sender
    recipients: list[Recipient]
    created: float = field(default_factory=time.time)
    attempts: int = 0
    next_attempt: float = 0.0
    held: bool = False
    client: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        d = json.loads(text)
        d["recipients"] = [Recipient(**r) for r in d["recipients"]]
        return cls(**d)


class Queue:
    def __init__(self, path: Path):
        self.path = path

    def add(self, message: Path, entry: Entry) -> None:
        """Take an fsynced ``message`` file (same file system) into the queue durably."""
        eml = self.path / f"{entry.id}.eml"
        os.link(message, eml)
        try:
            write_atomic(self.path / f"{entry.id}.json", entry.to_json(), 0o600)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            eml.unlink(missing_ok=True)
            (self.path / f"{entry.id}.json").unlink(missing_ok=True)
            raise

    def entries(self) -> list[Entry]:
        out = []
        for p in sorted(self.path.glob("*.json")):
            try:
                out.append(Entry.from_json(p.read_text()))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def message_path(self, entry_id: str) -> Path:
        return self.path / f"{entry_id}.eml"

    def clean_orphans(self) -> int:
        """Remove messages whose envelope was never written (crash before 250)."""
        n = 0
        for eml in self.path.glob("*.eml"):
            if not eml.with_suffix(".json").exists():
                eml.unlink(missing_ok=True)
                n += 1
        return n

"""A real, private clamd for the antivirus tests, with a signature database made here.

There is no official ClamAV database offline (no freshclam), so the test
writes its own for the EICAR test file, in two forms:

- ``eicar.hdb``: ``MD5:SIZE:Eicar-Test-Signature``, a whole-file hash.  It
  matches a file that is exactly the 68 EICAR bytes, e.g. a MIME attachment
  once clamd has decoded it, but not a mail whose body is EICAR: clamd does
  not take a mail without MIME headers apart, so it hashes the whole message;
- ``eicar.ndb``: ``Eicar-Test-Signature:0:*:HEX``, a body signature that
  matches the EICAR bytes anywhere in any file (raw stream or decoded part).

clamd 1.4 loads a directory holding only such ``.hdb``/``.ndb`` files (no
``main``/``daily`` needed) and names matches ``Eicar-Test-Signature.UNOFFICIAL``.

The instance lives in a short ``mkdtemp`` directory under /tmp (a Unix
socket path is limited to 108 bytes): ``clamd.conf``, the database, the
``clamd.ctl`` socket, the log, the pid file and clamd's temporary files.  It
listens on that socket and on a free port of 127.0.0.1.  clamd runs in the
foreground as a child of the fixture with the fixture's identity: without a
``User`` line it does not switch users, which works as root (as in CI) and
as an ordinary user alike.  ``stop()`` signals only that child.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port, need

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Test-Signature"
STREAM_MAX = 120 * 1024 * 1024  # StreamMaxLength below: above the 100 MB message limit


def clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if os.access(p, os.X_OK)), None)


class Clamd:
    """A private clamd; ``socket`` and ``port`` say where it listens."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="mailstack-clamd-"))
        self.dir.chmod(0o755)
        self.socket = str(self.dir / "clamd.ctl")
        self.port = free_port()
        self.conf = self.dir / "clamd.conf"
        self.log = self.dir / "clamd.log"
        self.proc: subprocess.Popen | None = None
        (self.dir / "db").mkdir()
        (self.dir / "tmp").mkdir()
        (self.dir / "db" / "eicar.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{SIGNATURE}\n")
        (self.dir / "db" / "eicar.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        self.conf.write_text(f"""\
Foreground yes
LocalSocket {self.socket}
LocalSocketMode 660
FixStaleSocket yes
TCPSocket {self.port}
TCPAddr 127.0.0.1
DatabaseDirectory {self.dir / "db"}
TemporaryDirectory {self.dir / "tmp"}
LogFile {self.log}
LogTime yes
PidFile {self.dir / "clamd.pid"}
SelfCheck 0
MaxThreads 4
ScanMail yes
ExtendedDetectionInfo yes
StreamMaxLength {STREAM_MAX // (1024 * 1024)}M
MaxScanSize 150M
MaxFileSize 150M
ReadTimeout 60
CommandReadTimeout 30
""")

    def start(self, timeout: float = 60.0) -> None:
        """Start clamd and return once it answers PING on both its socket and its port."""
        with open(self.dir / "stderr", "wb") as err:  # clamd keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ping(socket.AF_UNIX, self.socket) and self.ping(socket.AF_INET, ("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        self.stop(keep=True)
        raise RuntimeError(f"clamd did not start (config and log in {self.dir}):\n{self.output()}")

    @staticmethod
    def ping(family: int, address) -> bool:
        try:
            with socket.socket(family) as s:
                s.settimeout(2)
                s.connect(address)
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False

    def output(self) -> str:
        parts = [p.read_text(errors="replace")[-4000:] for p in (self.dir / "stderr", self.log) if p.exists()]
        return "\n".join(parts)

    def stop(self, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def clamd() -> Iterator[Clamd]:
    """A running private clamd for the whole session."""
    binary = clamd_binary()
    need(binary is not None, "clamd (Debian package clamav-daemon)")
    server = Clamd(binary)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()

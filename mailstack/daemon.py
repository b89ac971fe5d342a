"""Process skeleton shared by the daemons: logging, signals, clean shutdown.

``mailstack serve`` is a small supervisor: it runs each enabled daemon
(``mailstack imapd``, ``mailstack smtpd``) as its own child process, exactly
as the systemd units do, forwards SIGHUP to them, stops them all on
SIGINT/SIGTERM, and stops everything if one dies.  It also runs the periodic
account maintenance (inactivity rule, purge of old failure counters).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

from .config import Config, ConfigError, keep_restart_only
from .config import load as load_config

log = logging.getLogger("mailstack.serve")


class _Bindable(Protocol):
    address: str
    port: int


L = TypeVar("L", bound=_Bindable)

MAINTENANCE_INTERVAL = 3600.0
STOP_GRACE = 10.0


def notify(state: str) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET ("READY=1", "STOPPING=1",
    "STATUS=...", "WATCHDOG=1").  The protocol is these few lines; a library
    for it would be bigger than they are.  False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # "@": Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode("utf-8", "replace"), address)
        return True
    except OSError:
        return False


def start_watchdog() -> None:
    """WATCHDOG=1 at half of WatchdogSec while this process lives (systemd
    restarts a daemon whose supervisor stops answering)."""
    import threading

    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return
    interval = int(usec) / 2e6

    def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            time.sleep(interval)

    threading.Thread(target=ping, name="watchdog", daemon=True).start()


def setup_logging(level: str = "info", name: str = "mailstack") -> None:
    """One line per event on stderr; journald adds the timestamp under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s " + name + " %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries are quiet unless something is wrong.
    for noisy in ("sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reload_config(running: Config) -> Config | None:
    """SIGHUP: the configuration file read again.  None (one error line) when
    it does not load: the running configuration stays.  Keys that need a
    restart keep their running value, with a warning naming them."""
    if running.path is None:
        return None
    try:
        new = load_config(running.path)
    except ConfigError as e:
        log.error("reload: %s; keeping the running configuration", e)
        return None
    new, waiting = keep_restart_only(running, new)
    if waiting:
        log.warning("reload: %s changed; this takes effect at the next restart", ", ".join(waiting))
    logging.getLogger().setLevel(new.server.log_level.upper())
    log.info("reload: configuration %s loaded", running.path)
    return new


def reload_daemon(running: Config, apply: Callable[[Config], None], reload_tls: Callable[[Config], None]) -> Config:
    """SIGHUP in every daemon: the configuration (``apply`` gets it when it
    loaded), then the certificate, even when the first step failed.  Returns
    the configuration now in force."""
    cfg = running
    try:
        new = reload_config(running)
        if new is not None:
            apply(new)
            cfg = new
    except Exception:  # noqa: BLE001 (a resolver, a filter's own setup...): the running configuration stays
        log.exception("reload failed; the running configuration stays")
    finally:
        reload_tls(cfg)
    return cfg


_SESSIONS = itertools.count(1)


class Connections:
    """The open connections of one asyncio daemon worker, counted per client
    address (the limit is read at each call: a reload changes it)."""

    def __init__(self, service: str):
        from . import metrics

        self.service = service
        self.open: set = set()
        self.per_address: dict[str, int] = {}
        self._active = metrics.ACTIVE.labels(service)
        self._refused = metrics.CONNECTIONS_REFUSED.labels(service, "per_address")

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, conn: object, address: str, limit: int) -> bool:
        """Count ``conn`` in, or False (one log line) when its address has ``limit`` open already."""
        if self.per_address.get(address, 0) >= limit:
            log.warning("client=%s refused: too many connections from this address", address)
            self._refused.inc()
            return False
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.open.add(conn)
        self._active.inc()
        return True

    def release(self, conn: object, address: str) -> None:
        if conn not in self.open:
            return
        self.open.discard(conn)
        self._active.dec()
        n = self.per_address.get(address, 1) - 1
        if n > 0:
            self.per_address[address] = n
        else:
            self.per_address.pop(address, None)


def session_id(prefix: str) -> str:
    """The ID every log line of a connection carries: prefix, process, counter."""
    return f"{prefix}{os.getpid()}-{next(_SESSIONS)}"


@dataclass(frozen=True)
class DaemonSpec:
    name: str  # the CLI command that runs it: "imapd", "smtpd"
    enabled: bool


def daemon_specs(cfg: Config) -> list[DaemonSpec]:
    """The daemons ``serve`` starts.  A daemon is listed once its command exists."""
    from .cli import DAEMON_COMMANDS

    wanted = {"imapd": cfg.imap.enabled, "smtpd": cfg.smtp.enabled, "httpd": cfg.http.enabled,
              "managesieved": cfg.managesieve.enabled}
    return [DaemonSpec(n, wanted.get(n, True)) for n in DAEMON_COMMANDS]


def run_maintenance(cfg: Config) -> None:
    """Blocking: the inactivity rule and the purge of stale failure counters."""
    from .accounts.directory import Directory

    directory = Directory(cfg)
    try:
        disabled = directory.disable_inactive()
        for login in disabled:
            log.info("account disabled login=%s reason=inactivity days=%d", login, cfg.auth.inactivity_days)
        with directory.sessions() as s, s.begin():
            purged = directory.throttle.purge(s)
        log.debug("maintenance done disabled=%d purged=%d", len(disabled), purged)
    finally:
        directory.engine.dispose()


class Supervisor:
    def __init__(self, cfg: Config, config_path: Path):
        self.cfg = cfg
        self.config_path = config_path
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.failed = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        specs = [s for s in daemon_specs(self.cfg) if s.enabled]
        for spec in specs:
            await self._start(spec.name)
        watchers = [asyncio.create_task(self._watch(n, p)) for n, p in self.children.items()]
        maintenance = asyncio.create_task(self._maintenance())
        names = ", ".join(self.children) or "none yet"
        log.info("ready daemons=%s config=%s", names, self.config_path)
        await self.stopping.wait()
        maintenance.cancel()
        await self._terminate()
        for w in watchers:
            w.cancel()
        log.info("stopped")
        return 1 if self.failed else 0

    async def _start(self, name: str) -> None:
        cmd = [sys.executable, "-m", "mailstack", "-c", str(self.config_path), name]
        # Its own process group: a daemon's workers go down with it.
        self.children[name] = await asyncio.create_subprocess_exec(*cmd, start_new_session=True)
        log.info("started daemon=%s pid=%d", name, self.children[name].pid)

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self.stopping.is_set():
            log.error("daemon=%s exited with status %s; stopping everything", name, code)
            self.failed = True
            self.stopping.set()

    def _stop(self, sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        self.stopping.set()

    def _forward(self, sig: signal.Signals) -> None:
        for name, proc in self.children.items():
            if proc.returncode is None:
                log.info("forwarding %s to daemon=%s", sig.name, name)
                proc.send_signal(sig)

    async def _terminate(self) -> None:
        live = [p for p in self.children.values() if p.returncode is None]
        for p in live:
            p.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_GRACE)
        except asyncio.TimeoutError:
            for p in live:
                if p.returncode is None:
                    log.warning("pid=%d did not stop in %.0fs, killing it", p.pid, STOP_GRACE)
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            await asyncio.gather(*(p.wait() for p in live))

    async def _maintenance(self) -> None:
        while True:
            try:
                await asyncio.to_thread(run_maintenance, self.cfg)
            except Exception as e:  # keep serving; the next round may succeed
                log.error("maintenance failed: %s", e)
            await asyncio.sleep(MAINTENANCE_INTERVAL)


def serve(cfg: Config, config_path: Path) -> int:
    return asyncio.run(Supervisor(cfg, config_path).run())


# --- what both daemons share: sockets bound before forking, and the workers --------------


def bind_listeners(listeners: Sequence[L]) -> list[tuple[socket.socket, L]] | None:
    """Bind every listener before the workers fork, so each worker accepts on
    the same sockets; None (after one log line) if one cannot be bound."""
    socks = []
    for listener in listeners:
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listener.address, listener.port))
            sock.listen(1024)
        except OSError as e:
            log.error("cannot listen on %s port %d: %s", listener.address, listener.port, e.strerror)
            sock.close()
            for s, _ in socks:
                s.close()
            return None
        sock.setblocking(False)
        socks.append((sock, listener))
    return socks


def start_metrics(cfg: Config, daemon: str, port: int) -> None:
    """Before the workers fork: their samples go to files the endpoint (a
    thread of this process) reads.  Off when disabled or port 0."""
    if not (cfg.metrics.enabled and port):
        return
    from . import metrics

    try:
        metrics.prepare(metrics.directory(cfg.storage.spool, daemon))
    except OSError as e:
        log.error("metrics: cannot use %s: %s; serving without metrics", metrics.directory(cfg.storage.spool, daemon), e)
        return
    metrics.serve(cfg.metrics.address, port)


def supervise(workers: int, run_worker: Callable[[], int]) -> int:
    """Run ``run_worker`` in ``workers`` processes (0 = one per CPU; 1 = in this
    one): fork them before any event loop exists, restart one that dies
    unexpectedly, stop them all on SIGTERM/SIGINT."""
    workers = workers or (os.cpu_count() or 1)
    # The sockets are bound and listening already: connections wait in their
    # backlog from now on, so systemd may consider the service started.
    status = f"STATUS=accepting connections, {workers} worker{'s' if workers > 1 else ''}"
    if workers == 1:
        notify(f"READY=1\n{status}\nMAINPID={os.getpid()}")
        start_watchdog()
        return run_worker()
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the worker's own handler: ignored, not fatal
                code = run_worker()
            except BaseException:
                log.exception("worker pid=%d failed", os.getpid())
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(signum, frame) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
            notify("STOPPING=1\nSTATUS=stopping")
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for slot in range(workers):
        spawn(slot)
    notify(f"READY=1\n{status}\nMAINPID={os.getpid()}")
    start_watchdog()
    log.info("ready workers=%d", workers)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        if slot is not None:
            from .metrics import process_gone

            process_gone(pid)
        if slot is not None and not stopping:
            log.error("worker pid=%d exited with status %d; starting another", pid, os.waitstatus_to_exitcode(status))
            time.sleep(1)
            spawn(slot)
    return 0

"""Prometheus metrics of the daemons (prometheus-client).

A daemon runs several worker processes, so the metrics are kept in
prometheus-client's multiprocess mode: each worker writes its samples to
memory-mapped files in a directory of the spool, and the supervising
process serves their sum on a loopback port (``[metrics]``).  ``prepare``
must run before the first sample: every metric here has labels, so no
sample exists before a worker records one.  Without ``prepare`` (commands,
tests, a daemon with metrics off) the metrics count in memory and nobody
reads them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client import multiprocess

log = logging.getLogger("mailstack.metrics")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONNECTIONS = Counter("mailstack_connections", "Connections accepted", ["service", "listener"])
CONNECTIONS_REFUSED = Counter("mailstack_connections_refused", "Connections refused by a limit", ["service", "reason"])
ACTIVE = Gauge("mailstack_connections_active", "Connections open now", ["service"], multiprocess_mode="livesum")
LOGINS = Counter("mailstack_logins", "Login attempts by outcome", ["service", "outcome"])
AUTH_SECONDS = Histogram("mailstack_auth_seconds", "Time to check a login", ["service"], buckets=_LATENCY)
MESSAGES = Counter(
    "mailstack_messages",
    "Messages by what became of them: received (250 after DATA), rejected (5xx), tempfailed (4xx); "
    "delivered (service local: into a mailbox at once; queue: per recipient), deferred, bounced (queue)",
    ["service", "outcome"],
)
BYTES = Counter("mailstack_bytes", "Bytes: IMAP, all traffic from and to clients; SMTP, message bytes received",
                ["service", "direction"])
TRANSACTION_SECONDS = Histogram(
    "mailstack_smtp_transaction_seconds", "From the end of DATA to the reply: checks, filters, delivery",
    ["listener"], buckets=_LATENCY,
)
FILTER_VERDICTS = Counter("mailstack_filter_verdicts", "Filter verdicts", ["filter", "result"])
QUEUE_SIZE = Gauge("mailstack_queue_messages", "Messages in the outbound queue", ["state"], multiprocess_mode="livemax")
DELIVERY_SECONDS = Histogram("mailstack_outbound_attempt_seconds", "One delivery attempt to one destination domain",
                             ["result"], buckets=_LATENCY)
COMMAND_SECONDS = Histogram("mailstack_imap_command_seconds", "IMAP command latency", ["command"], buckets=_LATENCY)

IMAP_COMMANDS = frozenset(
    "APPEND AUTHENTICATE CAPABILITY CHECK CLOSE COPY CREATE DELETE ENABLE EXAMINE EXPUNGE FETCH GETQUOTA "
    "GETQUOTAROOT ID IDLE LIST LOGIN LOGOUT LSUB MOVE NAMESPACE NOOP RENAME SEARCH SELECT SETQUOTA SORT "
    "STARTTLS STATUS STORE SUBSCRIBE THREAD UID UNSELECT UNSUBSCRIBE GETMETADATA SETMETADATA".split()
)


def command_label(name: str) -> str:
    """A client-chosen command name as a label: only known ones, so a
    hostile client cannot grow the number of series."""
    name = name.upper()
    return name if all(w in IMAP_COMMANDS for w in name.split(" ")) else "other"


def directory(spool: Path, daemon: str) -> Path:
    return spool / "metrics" / daemon


def prepare(path: Path) -> None:
    """Switch this process (and the workers it will fork) to multiprocess
    mode in ``path``, emptied of what a previous run left there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.MultiProcessValue()


def serve(address: str, port: int) -> bool:
    """The endpoint (a thread of this process); False, after one log line,
    when the port cannot be bound: the daemon serves mail without it."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, address, registry)
    except OSError as e:
        log.error("metrics: cannot listen on %s port %d: %s", address, port, e.strerror or e)
        return False
    log.info("metrics: listening address=%s port=%d", address, port)
    return True


def process_gone(pid: int) -> None:
    """A worker ended: its live gauges no longer count."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)

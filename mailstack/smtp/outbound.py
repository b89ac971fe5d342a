"""Outbound SMTP: find a domain's MX hosts and hand one message to them.

One connection per destination carries all of that domain's recipients.
MX hosts are tried by preference (RFC 5321 5.1): no MX record means the
domain's own A/AAAA (implicit MX), a null MX (RFC 7505) or a domain that
does not exist is a permanent failure.  Connection failures and refusals at
the greeting or EHLO move on to the next address or host; replies to MAIL,
RCPT and DATA are the destination's answer and are not retried elsewhere.

The client is aiosmtplib.  It has no streaming DATA (it takes the whole
message as bytes), so ``_send_data`` streams the queued file through its
protocol object chunk by chunk under the same command lock, with flow
control: memory stays one chunk whatever the size.

TLS: STARTTLS whenever offered ("may": certificates are not verified, as
between MX hosts without DANE or MTA-STS); "encrypt" refuses to send in
clear.  ``tls_policy`` is the one place a DANE (TLSA) or MTA-STS lookup will
return a stricter policy per destination.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from ..config import Config
from .dotdata import DataEncoder

log = logging.getLogger("mailstack.queue")

CHUNK = 64 * 1024
BATCH = 100  # recipients per transaction (RFC 5321 4.5.3.1.8: servers must take at least 100)


@dataclass
class Outcome:
    status: str  # delivered | failed | pending
    reason: str
    remote_mta: str = ""


class Permanent(Exception):
    """The destination can never be reached (the text is a reply with its code)."""


class Temporary(Exception):
    """Try again later (the text says why)."""


def client_tls_context() -> ssl.SSLContext:
    """Opportunistic TLS between MX hosts: encrypt, do not authenticate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_policy(cfg: Config, domain: str) -> str:
    """"may" or "encrypt" for this destination.  DANE and MTA-STS plug in here."""
    return cfg.queue.tls


async def mx_hosts(resolver: dns.asyncresolver.Resolver, domain: str) -> list[str]:
    """Host names to try, best preference first."""
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise Permanent(f"550 5.1.2 Domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        return [domain]  # implicit MX
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException) as e:
        raise Temporary(f"451 4.4.3 MX lookup for {domain} failed: {type(e).__name__}") from None
    records = sorted(answer, key=lambda r: r.preference)
    if any(r.exchange.to_text() == "." for r in records):
        raise Permanent(f"556 5.1.10 Domain {domain} accepts no mail (null MX)")
    seen, hosts = set(), []
    for r in records:
        host = r.exchange.to_text(omit_final_dot=True).lower()
        if host not in seen:
            seen.add(host)
            hosts.append(host)
    return hosts


async def addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """IPv4 then IPv6 addresses of a host; an empty list when it has none."""
    out: list[str] = []
    failed = 0
    for rtype in ("A", "AAAA"):
        try:
            out += [r.address for r in await resolver.resolve(host, rtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            pass
        except dns.exception.DNSException:
            failed += 1
    if not out and failed:
        raise Temporary(f"451 4.4.3 Address lookup for {host} failed")
    return out


def _reply(r: aiosmtplib.SMTPResponse) -> str:
    return f"{r.code} {' '.join(r.message.split())}"[:900]


Record = Callable[[dict[str, Outcome]], Awaitable[None]]


class _Attempt:
    """One message to one domain: the outcomes so far, kept across hosts so a
    connection lost after a confirmed transaction never resends it."""

    def __init__(self, domain: str, sender: str, recipients: list[str], message: Path, prefix: bytes,
                 body8: bool, smtputf8: bool, record: Record | None):
        self.domain, self.sender, self.message, self.prefix = domain, sender, message, prefix
        self.recipients, self.body8, self.smtputf8 = recipients, body8, smtputf8
        self.out: dict[str, Outcome] = {}
        self._record = record

    @property
    def todo(self) -> list[str]:
        return [r for r in self.recipients if r not in self.out]

    async def settle(self, outcomes: dict[str, Outcome]) -> None:
        """Final answers for some recipients; delivered ones are recorded at once."""
        self.out.update(outcomes)
        if self._record is not None and outcomes:
            await self._record(outcomes)


class Delivery:
    """One message to one destination domain."""

    def __init__(self, cfg: Config, resolver: dns.asyncresolver.Resolver, tls: ssl.SSLContext):
        self.cfg = cfg
        self.resolver = resolver
        self.tls = tls

    async def deliver(
        self, domain: str, sender: str, recipients: list[str], message: Path, prefix: bytes = b"",
        *, body8: bool = False, smtputf8: bool = False, record: Record | None = None,
    ) -> dict[str, Outcome]:
        """An outcome for every recipient; never raises (a bug or a hostile
        reply leaves the rest pending).  ``record`` is awaited with each
        transaction's outcomes as soon as the remote host gives them."""
        att = _Attempt(domain, sender, recipients, message, prefix, body8, smtputf8, record)
        try:
            last = await self._try_hosts(att)
        except Exception as e:  # noqa: BLE001 (an outcome for every recipient, whatever happened)
            log.exception("outbound domain=%s failed", domain)
            last = f"451 4.3.0 Delivery attempt failed: {_why(e)}"
        return {**{r: Outcome("pending", last) for r in att.todo}, **att.out}

    async def _try_hosts(self, att: _Attempt) -> str:
        """Tries MX hosts until all recipients have an answer; returns the last
        temporary problem for those that have none."""
        domain = att.domain
        try:
            hosts = await mx_hosts(self.resolver, domain)
        except Permanent as e:
            await att.settle({r: Outcome("failed", str(e)) for r in att.todo})
            return ""
        except Temporary as e:
            return str(e)
        last = f"451 4.4.1 No MX host of {domain} answered"
        for host in hosts:
            try:
                addrs = await addresses(self.resolver, host)
            except Temporary as e:
                last = str(e)
                continue
            if not addrs:
                if hosts == [domain]:  # no MX and no address: not a mail domain (RFC 5321 5.1)
                    await att.settle({r: Outcome("failed", f"556 5.1.2 Domain {domain} has no MX and no address") for r in att.todo})
                    return ""
                last = f"451 4.4.4 MX host {host} has no address"
                continue
            for addr in addrs:
                try:
                    await self._session(host, addr, att)
                    return last
                except _NextHost as e:
                    last = str(e)
                    log.info("outbound domain=%s host=%s[%s] %s", domain, host, addr, last)
                if not att.todo:
                    return last
        return last

    async def _session(self, host: str, addr: str, att: _Attempt, use_tls: bool = True) -> None:
        q = self.cfg.queue
        mta = f"{host}[{addr}]"
        policy = tls_policy(self.cfg, att.domain)
        client = aiosmtplib.SMTP(
            hostname=addr, port=q.port, local_hostname=self.cfg.hostname, timeout=q.timeout, start_tls=False,
        )
        try:
            try:
                await client.connect(timeout=q.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as e:
                raise _NextHost(f"451 4.4.1 {mta} refused the session: {e.code} {_one_line(e.message)}") from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:
                raise _NextHost(f"451 4.4.1 Cannot connect to {mta}: {_why(e)}") from None
            try:
                await self._hello(client, mta)
                if client.supports_extension("starttls") and use_tls:
                    try:
                        await client.starttls(tls_context=self.tls, server_hostname=host)
                    except (aiosmtplib.SMTPException, ssl.SSLError, OSError, asyncio.TimeoutError) as e:
                        if policy == "may":  # once more, in clear
                            client.close()
                            log.info("outbound domain=%s host=%s STARTTLS failed (%s); retrying without TLS", att.domain, mta, _why(e))
                            return await self._session(host, addr, att, False)
                        raise _NextHost(f"451 4.7.5 STARTTLS with {mta} failed: {_why(e)}") from None
                    await self._hello(client, mta)
                elif policy == "encrypt":
                    raise _NextHost(f"451 4.7.4 {mta} does not offer STARTTLS and TLS is required")
                await self._transactions(client, mta, att)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, asyncio.TimeoutError) as e:
                raise _NextHost(f"451 4.4.2 Connection to {mta} lost: {_why(e)}") from None
            except aiosmtplib.SMTPResponseException as e:  # a reply aiosmtplib cannot parse
                raise _NextHost(f"451 4.5.0 {mta} sent an invalid reply: {e.code} {_one_line(e.message)}") from None
        finally:
            if client.is_connected:
                try:
                    await asyncio.wait_for(client.execute_command(b"QUIT"), 5)
                except Exception:  # noqa: BLE001 (the outcome is already decided)
                    pass
                client.close()

    async def _hello(self, client: aiosmtplib.SMTP, mta: str) -> None:
        try:
            await client.ehlo(hostname=self.cfg.hostname)
        except aiosmtplib.SMTPHeloError:
            try:
                await client.helo(hostname=self.cfg.hostname)
            except aiosmtplib.SMTPHeloError as e:
                raise _NextHost(f"451 4.4.1 {mta} refused HELO: {e.code} {_one_line(e.message)}") from None

    async def _transactions(self, client: aiosmtplib.SMTP, mta: str, att: _Attempt) -> None:
        size = len(att.prefix) + att.message.stat().st_size
        limit = client.esmtp_extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < size:
            reply = f"552 5.3.4 Message too big for {mta} ({size} > {limit} bytes)"
            await att.settle({r: Outcome("failed", reply, mta) for r in att.todo})
            return
        needs_utf8 = not all(a.isascii() for a in (att.sender, *att.recipients))
        if needs_utf8 and not client.supports_extension("smtputf8"):
            await att.settle({r: Outcome("failed", f"553 5.6.7 {mta} does not support SMTPUTF8", mta) for r in att.todo})
            return
        params = []
        if client.supports_extension("size"):
            params.append(f"SIZE={size}".encode())
        if att.body8 and client.supports_extension("8bitmime"):
            params.append(b"BODY=8BITMIME")
        if (needs_utf8 or att.smtputf8) and client.supports_extension("smtputf8"):
            params.append(b"SMTPUTF8")
        first = True
        while att.todo:
            if not first:
                r = await client.execute_command(b"RSET")
                if r.code != 250:
                    raise _NextHost(f"451 4.4.2 {mta} refused RSET: {_reply(r)}")
            first = False
            todo = att.todo
            r = await client.execute_command(b"MAIL", f"FROM:<{att.sender}>".encode(), *params)
            if r.code != 250:
                status = "failed" if r.code >= 500 else "pending"
                await att.settle({a: Outcome(status, _reply(r), mta) for a in todo})
                return
            accepted: list[str] = []
            refused: dict[str, Outcome] = {}
            for a in todo[:BATCH]:
                r = await client.execute_command(b"RCPT", f"TO:<{a}>".encode())
                if r.code in (250, 251):
                    accepted.append(a)
                elif r.code in (452, 552) and accepted:  # too many recipients (RFC 5321 4.5.3.1.10): next transaction
                    break
                else:
                    refused[a] = Outcome("failed" if r.code >= 500 else "pending", _reply(r), mta)
            await att.settle(refused)
            if not accepted:
                if not refused:
                    return
                continue
            r = await self._send_data(client, att.prefix, att.message)
            status = "delivered" if r.code == 250 else "failed" if r.code >= 500 else "pending"
            await att.settle({a: Outcome(status, _reply(r), mta) for a in accepted})

    async def _send_data(self, client: aiosmtplib.SMTP, prefix: bytes, message: Path) -> aiosmtplib.SMTPResponse:
        """DATA, streamed from the file (see the module docstring)."""
        proto = client.protocol
        if proto is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        timeout = self.cfg.queue.timeout
        async with proto._command_lock:
            proto._response_pending = True
            proto.write(b"DATA\r\n")
            r = await proto.read_response(timeout=timeout)
            if r.code != 354:
                return r
            proto._response_pending = True
            enc = DataEncoder()
            proto.write(enc.encode(prefix))
            with open(message, "rb") as f:  # page-cache reads of 64 KiB: microseconds each
                while chunk := f.read(CHUNK):
                    proto.write(enc.encode(chunk))
                    await asyncio.wait_for(proto._drain_helper(), timeout)
            proto.write(enc.finish())
            return await proto.read_response(timeout=max(timeout, 600))  # RFC 5321 4.5.3.2.6: 10 minutes


class _NextHost(Exception):
    """This host did not take the session: try the next address or MX host."""


def _why(e: BaseException) -> str:
    return _one_line(str(e) or type(e).__name__)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]

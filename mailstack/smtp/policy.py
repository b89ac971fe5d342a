"""Who may send what to whom, per listener: the aiosmtpd handler hooks.

- submission (587, 465): AUTH first; MAIL FROM must be the account's own
  address or an alias or list that reaches it (553 5.7.1 otherwise); local
  recipients must exist; remote ones go to the queue.
- mx (25): no AUTH; only addresses of our domains that reach an account,
  alias or list (550 5.1.1 otherwise); any other domain is 554 5.7.1, so the
  MX is never a relay, whatever the client claims.

Every directory lookup runs in the server's thread pool, never on the loop.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

from .. import metrics
from ..config import SmtpListener
from ..filters import Envelope
from ..filters.pipeline import header_bytes
from ..mailauth.dkim import field_name, split_fields
from ..store.quota import QuotaExceeded
from .delivery import Transaction
from .spool import HEAD_LIMIT, HeaderTooLarge, SpoolFile, header_end, new_id, received_header

if TYPE_CHECKING:
    from .protocol import MailEnvelope, SmtpSession
    from .server import Server

log = logging.getLogger("mailstack.smtp")

MAX_HOPS = 50  # Received headers before a message is taken for a loop (Postfix: 50)
_RECEIVED = re.compile(rb"(?:^|\n)received[ \t]*:", re.IGNORECASE)


class _SpoolMessage:
    """A spooled message as filters see it (mailstack.filters.Message)."""

    def __init__(self, spool: SpoolFile):
        self._spool = spool
        self.size = spool.length()

    def open(self):
        return self._spool.open()


class Policy:
    def __init__(self, server: Server, listener: SmtpListener):
        self.server = server
        self.cfg = server.cfg
        self.auth = server.auth
        self.listener = listener
        self.submission = listener.kind == "submission"

    # -- envelope (aiosmtpd hooks) -----------------------------------------------------

    async def handle_MAIL(self, smtp: SmtpSession, session, envelope: MailEnvelope, address: str, options: list[str]) -> str:  # noqa: N802
        if self.submission:  # the account's own address, or an alias or list reaching it
            login = session.auth_data
            reached = None if address == "<>" else await self.server.expand_local(address)
            if reached is None or not any(a.login == login for a in reached[0]):
                log.warning("session=%s client=%s login=%s refused sender=%s", smtp.id, smtp.client_ip, login, address[:200])
                return f"553 5.7.1 Sender address not owned by {login}"
        for opt in options:
            if opt.startswith("SIZE="):
                envelope.declared_size = int(opt[5:])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, smtp: SmtpSession, session, envelope: MailEnvelope, address: str, options: list[str]) -> str:  # noqa: N802
        if len(envelope.rcpt_tos) >= self.cfg.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        if "@" not in address:
            if address.lower() != "postmaster":  # RFC 5321 4.5.1: must be accepted without a domain
                return "501 5.1.3 Recipient address needs a domain"
            address = f"postmaster@{self.cfg.default_domain}"
        domain = address.rpartition("@")[2].lower()
        srs = self.server.srs
        if srs is not None and srs.is_srs(address):  # a bounce of mail we forwarded
            original = srs.reverse(address) if envelope.mail_from == "<>" else None
            if original is None:
                log.warning("session=%s client=%s SRS address refused to=%s", smtp.id, smtp.client_ip, address[:200])
                return "550 5.1.1 Recipient address unknown"
            if original.rpartition("@")[2].lower() not in self.cfg.server.domains:
                if original.lower() not in (r.lower() for r in envelope.remote):  # the one relay the MX makes
                    envelope.remote.append(original)
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(options)
                return "250 2.1.5 Recipient OK"
            address, domain = original, original.rpartition("@")[2].lower()
        if domain not in self.cfg.server.domains:
            if not self.submission:
                log.warning("session=%s client=%s relay refused to=%s", smtp.id, smtp.client_ip, address[:200])
                return "554 5.7.1 Relay access denied"
            if address.lower() not in (r.lower() for r in envelope.remote):
                envelope.remote.append(address)
        else:
            reached = await self.server.expand_local(address)
            if reached is None:
                return "550 5.1.1 Recipient address unknown"
            accounts, remote = reached
            if len(accounts) == 1 and not remote and envelope.declared_size:
                refusal = await self.server.run(self._quota_refusal, accounts[0], envelope.declared_size)
                if refusal:
                    return refusal
            for a in accounts:
                envelope.accounts[a.login] = a
                envelope.reached_by.setdefault(a.login, []).append(address)  # Sieve vacation: "my" addresses
            envelope.remote.extend(r for r in remote if r not in envelope.remote)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    def _quota_refusal(self, info, size: int) -> str | None:
        from ..mailboxes import limits, mailbox_for

        if not any(limits(self.cfg, info)):
            return None
        try:
            mailbox_for(self.cfg, info).quota.check(size, 1)
        except QuotaExceeded:
            return f"552 5.2.2 Mailbox of {info.address} is full"
        return None

    # -- the message ---------------------------------------------------------------------

    def _mail_auth(self, tx: Transaction) -> str | None:
        """Loops, then submission: DKIM-sign; MX: SPF, DKIM, DMARC into
        Authentication-Results and the DMARC policy.  Either way a copy of
        that header claiming our host name is removed: only we write it.
        Blocking (DNS, the spool): runs in the pool.  Returns a refusal, or
        None to deliver."""
        from ..mailauth.inbound import strip_forged

        spool = tx.spool
        hostname = self.cfg.hostname
        try:
            with spool.open() as f:
                head = f.read(HEAD_LIMIT + 2)
            head = head[: header_end(head, len(head) <= HEAD_LIMIT)]
        except HeaderTooLarge:
            return "554 5.6.0 Header section too large"
        if len(_RECEIVED.findall(head)) > MAX_HOPS:  # RFC 5321 6.3: a mail loop
            log.warning("message id=%s refused: more than %d Received headers (loop)", tx.id, MAX_HOPS)
            return "554 5.4.6 Too many hops: mail loop"
        strip = lambda block: strip_forged(block, hostname)  # noqa: E731
        if self.submission:
            signature = b""
            if self.cfg.dkim.sign:
                from ..mailauth.signing import sign_for_domain

                def owned(address: str) -> bool:
                    reached = self.server.directory.expand_local(address)
                    return reached is not None and any(a.login == tx.login for a in reached[0])

                signature = sign_for_domain(spool.open, self.cfg, owned)
                if signature:
                    tx.results.append("dkim=signed")
            spool.rewrite_head(signature, strip)
            return None
        if not self.cfg.mailauth.verify:
            spool.rewrite_head(b"", strip)
            return None
        from ..mailauth.inbound import authenticate

        with spool.open() as f:
            verdict = authenticate(f, authserv_id=hostname, client_ip=tx.client, helo=tx.helo, mail_from=tx.sender)
        tx.results.append(f"spf={verdict.spf} dkim={'+'.join(d.result for d in verdict.dkim) or 'none'} dmarc={verdict.dmarc}")
        action = verdict.action(self.cfg.mailauth.enforce_dmarc)
        if action == "reject":
            return f"550 5.7.1 Message refused by the DMARC policy of {verdict.from_domain or 'its author domain'}"
        if action == "quarantine":
            tx.folder = "Junk"
        spool.rewrite_head(verdict.header, strip)
        return None

    async def _filter(self, tx: Transaction) -> str | None:
        """The antivirus/antispam filters (filters/pipeline.py), for both
        listeners: a final reply (refused, to retry, quarantined), or None
        to deliver (tagged, into Junk when it is spam)."""
        envelope = Envelope(
            queue_id=tx.id, listener=tx.listener, client_ip=tx.client, helo=tx.helo, login=tx.login,
            sender=tx.sender, recipients=tuple([a.address for a in tx.accounts.values()] + tx.remote),
        )
        out = await self.server.filters.run(_SpoolMessage(tx.spool), envelope)
        tx.results.extend(out.results)
        if out.action in ("reject", "tempfail"):
            return out.reply
        if out.headers or out.strip:
            names = {n.encode() for n in out.strip}

            def without_owned(head: bytes) -> bytes:
                return b"".join(f for f in split_fields(head) if field_name(f) not in names)

            await self.server.run_to_the_end(tx.spool.rewrite_head, header_bytes(out.headers), without_owned)
        if out.spam:
            tx.folder = "Junk"
        if out.action == "quarantine":
            return await self.server.run_to_the_end(
                self.server.quarantine.add, tx, f"{out.by}: {out.reason}", self.cfg.server.domains,
            )
        return None

    def open_spool(self, smtp: SmtpSession) -> SpoolFile:
        env, session = smtp.envelope, smtp.session
        env.msg_id = new_id()
        login = session.auth_data if session.authenticated else None
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.extended_smtp:
            protocol += ("S" if smtp.tls_active else "") + ("A" if login else "")
        header = received_header(
            helo=session.host_name or "",
            client_ip=smtp.client_ip,
            hostname=self.cfg.hostname,
            protocol=protocol,
            msg_id=env.msg_id,
            recipient=env.rcpt_tos[0] if len(env.rcpt_tos) == 1 else None,
            tls=smtp.tls_description(),
            login=login,
        )
        return SpoolFile(self.server.incoming, env.msg_id, header, self.cfg.limits.max_message_size)

    async def accept(self, smtp: SmtpSession, spool: SpoolFile) -> str:
        """The whole message is spooled: filter it, deliver it, answer for it."""
        env, session = smtp.envelope, smtp.session
        tx = Transaction(
            id=env.msg_id,
            sender="" if env.mail_from == "<>" else env.mail_from,
            accounts=dict(env.accounts),
            reached_by={k: list(v) for k, v in env.reached_by.items()},
            remote=list(env.remote),
            spool=spool,
            client=smtp.client_ip,
            helo=session.host_name or "",
            login=session.auth_data if session.authenticated else None,
            listener=self.listener.kind,
            rcpt_count=len(env.rcpt_tos),
            body8=any(o.upper() == "BODY=8BITMIME" for o in env.mail_options),
            smtputf8=any(o.upper() == "SMTPUTF8" for o in env.mail_options),
        )
        if smtp._timeout_handle is not None:  # delivery is our time, not the client's
            smtp._timeout_handle.cancel()
        status = "451 4.3.0 Interrupted"  # what the log says if the client leaves first
        start = time.monotonic()
        try:
            spool.finish()
            status = await self.server.run_to_the_end(self._mail_auth, tx)
            if status is None and self.server.filters:
                status = await self._filter(tx)
            if status is None:
                status = await self.server.run_to_the_end(self.server.delivery.deliver, tx)
        finally:
            spool.discard()  # delivered copies and the queue have their own links
            if self.server.runner is not None:
                for entry_id in ([tx.id] if tx.queued else []) + tx.spawned:
                    self.server.runner.schedule(entry_id)
            code = (status or "451")[:1]
            metrics.MESSAGES.labels("smtp", {"2": "received", "4": "tempfailed"}.get(code, "rejected")).inc()
            metrics.BYTES.labels("smtp", "in").inc(spool.size)
            metrics.TRANSACTION_SECONDS.labels(self.listener.kind).observe(time.monotonic() - start)
            log.info(  # even when the client went away meanwhile: what was delivered is on record
                "message id=%s session=%s listener=%s client=%s login=%s from=<%s> rcpts=%d size=%d status=%s %s",
                tx.id, smtp.id, tx.listener, tx.client, tx.login or "-", tx.sender[:200], tx.rcpt_count, spool.size,
                (status or "451")[:3], " ".join(tx.results),
            )
        smtp._reset_timeout()
        return status

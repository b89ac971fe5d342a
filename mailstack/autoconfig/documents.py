"""The autoconfiguration documents, as pure functions: a ``Settings`` in, bytes out.

- Thunderbird: config-v1.1 XML, as Thunderbird's own reader
  (comm-central ``readFromXML.sys.mjs``) reads it.
- Outlook: POX autodiscover; the request (schema ``.../outlook/requestschema/2006``)
  is parsed here, the answer uses the ``.../outlook/responseschema/2006a`` schema.
- Apple: a configuration profile holding one ``com.apple.mail.managed`` payload.

What comes from a request (the address) only ever goes through xml.etree or
plistlib, which escape it: no document is built by string formatting.  Request
bodies are parsed by defusedxml with DTDs refused (no entities, no external
references, no billion laughs).
"""

from __future__ import annotations

import dataclasses
import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from ..config import Config, domain_name_problem

MAX_REQUEST_BODY = 16 * 1024  # an Outlook request is about 400 bytes

AUTODISCOVER_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

# Thunderbird replaces it with the part of the address before the @ (our logins
# are prenom.nom; the full address works too, but the short form is what staff know).
THUNDERBIRD_USERNAME = "%EMAILLOCALPART%"

# RFC 5322 dot-atom: what a plausible local part looks like (no quoted strings,
# no comments, ASCII only: our logins are far narrower than this).
_LOCAL_PART = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")  # fullmatch


class BadRequest(ValueError):
    """The request cannot be answered; the text is one line for the client (HTTP 400)."""


@dataclass(frozen=True)
class Settings:
    """What a client needs to know.  A port is None when no listener offers it."""

    hostname: str
    domain: str
    imaps_port: int | None  # IMAP, implicit TLS (993)
    submission_port: int | None  # SMTP submission, STARTTLS (587)
    submissions_port: int | None  # SMTP submission, implicit TLS (465)
    address: str | None = None  # when the request named one, lowercased

    @property
    def local_part(self) -> str | None:
        return self.address.rsplit("@", 1)[0] if self.address else None

    def outgoing(self) -> list[tuple[int, bool]]:
        """(port, implicit TLS) of each submission service, best first: implicit
        TLS before STARTTLS (RFC 8314 3.3), as the SRV records of ``mailstack dns`` say."""
        found = [(self.submissions_port, True), (self.submission_port, False)]
        return [(port, implicit) for port, implicit in found if port]

    def for_request(self, domain: str, address: str | None = None) -> Settings:
        return dataclasses.replace(self, domain=domain, address=address)


def settings_from_config(cfg: Config) -> Settings:
    """The services the configured listeners offer, for no domain yet.

    IMAP: the first implicit-TLS listener only.  Port 143 is not advertised:
    we want TLS from the first byte, and Thunderbird uses the first incoming
    server it understands anyway (the others only show in its manual screen).
    The MX listener is never advertised.  A disabled daemon offers nothing,
    as in ``mailstack dns``.
    """
    imaps = [lst.port for lst in cfg.imap.listeners if lst.tls == "implicit"] if cfg.imap.enabled else []
    sub = [lst for lst in cfg.smtp.listeners if lst.kind == "submission"] if cfg.smtp.enabled else []
    starttls = [lst.port for lst in sub if lst.tls == "starttls"]
    implicit = [lst.port for lst in sub if lst.tls == "implicit"]
    return Settings(
        hostname=cfg.hostname.lower().rstrip("."),
        domain="",
        imaps_port=imaps[0] if imaps else None,
        submission_port=starttls[0] if starttls else None,
        submissions_port=implicit[0] if implicit else None,
    )


def nothing_to_serve(s: Settings) -> str | None:
    """Why no client could be configured from ``s``, or None."""
    if s.imaps_port is None:
        return 'no IMAP listener with tls = "implicit" to advertise (imap.listeners, imap.enabled)'
    if not s.outgoing():
        return 'no SMTP listener of kind = "submission" to advertise (smtp.listeners, smtp.enabled)'
    return None


# --- request parsing -------------------------------------------------------------------


def parse_address(text: str) -> str:
    """A plausible ``local@domain``, lowercased; BadRequest otherwise."""
    address = text.strip().lower()
    local, at, domain = address.rpartition("@")
    if (
        not at
        or len(address) > 254
        or not (address.isascii() and address.isprintable())
        or not 1 <= len(local) <= 64
        or not _LOCAL_PART.fullmatch(local)
        or domain_name_problem(domain)
        or "." not in domain
    ):
        raise BadRequest("the address is not of the form local@domain")
    return address


def domain_from_host(host: str) -> str | None:
    """The mail domain a Host header names: port and ``autoconfig.`` dropped
    (Thunderbird asks https://autoconfig.DOMAIN/); None if it is not a domain name."""
    name = host.strip().lower().rstrip(".")
    if not (name.isascii() and name.isprintable()):
        return None
    if name.startswith("["):  # an IPv6 literal is no mail domain
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".").removeprefix("autoconfig.")
    return None if domain_name_problem(name) else name


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in parent if _local_name(c.tag) == name), None)


def parse_autodiscover_request(body: bytes) -> str:
    """The address an Outlook POX request asks about (checked, lowercased).

    Namespaces are not insisted on (clients differ); the shape is:
    ``<Autodiscover><Request><EMailAddress>`` and, when present,
    ``<AcceptableResponseSchema>`` naming the Outlook 2006a schema.
    """
    if len(body) > MAX_REQUEST_BODY:
        raise BadRequest(f"the request body is larger than {MAX_REQUEST_BODY} bytes")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise BadRequest("the request body has a DTD or entities; they are refused") from None
    except (ET.ParseError, ValueError, LookupError):
        raise BadRequest("the request body is not well-formed XML") from None
    request = _child(root, "Request") if _local_name(root.tag) == "Autodiscover" else None
    if request is None:
        raise BadRequest("expected an <Autodiscover><Request> document")
    schema = _child(request, "AcceptableResponseSchema")
    if schema is not None and (schema.text or "").strip() != OUTLOOK_RESPONSE_SCHEMA:
        raise BadRequest(f"only the response schema {OUTLOOK_RESPONSE_SCHEMA} is served")
    email = _child(request, "EMailAddress")
    if email is None or not (email.text or "").strip():
        raise BadRequest("the request has no <EMailAddress>")
    return parse_address(email.text or "")


# --- documents -----------------------------------------------------------------------


def _text(parent: ET.Element, tag: str, value: str | int) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = str(value)
    return el


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def thunderbird_config(s: Settings) -> bytes:
    """config-v1.1 XML for ``s.domain``; the same for every address of it
    (the user name is Thunderbird's %EMAILLOCALPART% placeholder)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=s.domain)
    _text(provider, "domain", s.domain)
    _text(provider, "displayName", s.domain)
    _text(provider, "displayShortName", s.domain)
    servers: list[tuple[str, str, int, str]] = []
    if s.imaps_port:
        servers.append(("incomingServer", "imap", s.imaps_port, "SSL"))
    servers += [("outgoingServer", "smtp", port, "SSL" if implicit else "STARTTLS") for port, implicit in s.outgoing()]
    for element, kind, port, socket_type in servers:
        server = ET.SubElement(provider, element, type=kind)
        _text(server, "hostname", s.hostname)
        _text(server, "port", port)
        _text(server, "socketType", socket_type)
        # Plain AUTH/LOGIN inside TLS; "password-encrypted" would mean CRAM-MD5.
        _text(server, "authentication", "password-cleartext")
        _text(server, "username", THUNDERBIRD_USERNAME)
    return _xml(root)


def autodiscover_response(s: Settings) -> bytes:
    """The Outlook 2006a answer for ``s.address``: IMAP and SMTP settings.

    ``<SSL>`` says whether the logon is protected (on for both); ``<Encryption>``,
    which Outlook 2010 and later read in preference to it, says how: "SSL" is TLS
    from the first byte (993, 465), "TLS" is STARTTLS (587).  Outlook takes the
    first protocol of each type, so SMTP is the best submission service only.
    ``<SPA>off``: SPA is Microsoft's NTLM logon, which we do not speak.
    """
    if not s.address:
        raise ValueError("autodiscover_response needs the address")
    # The namespaces are written as plain xmlns attributes: two nested default
    # namespaces, as Exchange writes them (ElementTree would invent prefixes).
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_SCHEMA)
    _text(ET.SubElement(response, "User"), "DisplayName", s.address)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    protocols: list[tuple[str, int, bool]] = []
    if s.imaps_port:
        protocols.append(("IMAP", s.imaps_port, True))
    protocols += [("SMTP", port, implicit) for port, implicit in s.outgoing()[:1]]
    for kind, port, implicit in protocols:
        p = ET.SubElement(account, "Protocol")
        _text(p, "Type", kind)
        _text(p, "Server", s.hostname)
        _text(p, "Port", port)
        _text(p, "LoginName", s.local_part or "")
        _text(p, "DomainRequired", "off")
        _text(p, "SPA", "off")
        _text(p, "SSL", "on")
        _text(p, "Encryption", "SSL" if implicit else "TLS")
        _text(p, "AuthRequired", "on")
        if kind == "SMTP":
            _text(p, "UsePOPAuth", "off")
            _text(p, "SMTPLast", "off")
    return _xml(root)


def _reverse_dns(domain: str) -> str:
    return ".".join(reversed(domain.split(".")))


def profile_uuids(address: str) -> tuple[uuid.UUID, uuid.UUID]:
    """(profile, mail payload) UUIDs: the same for an address every time, so a
    profile downloaded again replaces the installed one instead of adding one."""
    profile = uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}")
    return profile, uuid.uuid5(profile, "com.apple.mail.managed")


def mobileconfig(s: Settings) -> bytes:
    """An unsigned configuration profile (XML plist) with one IMAP mail account.
    The device asks for the password when the profile is installed."""
    if not s.address or not s.imaps_port or not s.outgoing():
        raise ValueError("mobileconfig needs the address, IMAP and submission")
    profile_id, mail_id = profile_uuids(s.address)
    identifier = f"{_reverse_dns(s.domain)}.mailstack.{profile_id}"
    out_port, _implicit = s.outgoing()[0]  # Apple Mail does STARTTLS when UseSSL is set on 587
    login = s.local_part or ""
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier + ".mail",
        "PayloadUUID": str(mail_id).upper(),
        "PayloadDisplayName": f"Mail {s.address}",
        "EmailAccountDescription": s.address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": s.address,
        "IncomingMailServerHostName": s.hostname,
        "IncomingMailServerPortNumber": s.imaps_port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": login,
        "OutgoingMailServerHostName": s.hostname,
        "OutgoingMailServerPortNumber": out_port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": login,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(profile_id).upper(),
        "PayloadDisplayName": f"Mail {s.domain}",
        "PayloadDescription": f"IMAP and SMTP settings of {s.address} on {s.hostname}",
        "PayloadOrganization": s.domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def mobileconfig_filename(s: Settings) -> str:
    """A safe file name (the domain passed domain_name_problem: letters, digits, dots, hyphens)."""
    return f"mail-{s.domain}.mobileconfig"

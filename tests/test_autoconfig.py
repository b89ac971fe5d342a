"""Client autoconfiguration: the documents (as Thunderbird, Outlook and Apple read
them) and a real ``mailstack httpd`` over HTTPS, fed hostile requests too."""

from __future__ import annotations

import http.client
import os
import plistlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mailstack.autoconfig.documents import (
    MAX_REQUEST_BODY,
    OUTLOOK_RESPONSE_SCHEMA,
    BadRequest,
    Settings,
    autodiscover_response,
    domain_from_host,
    mobileconfig,
    nothing_to_serve,
    parse_address,
    parse_autodiscover_request,
    profile_uuids,
    settings_from_config,
    thunderbird_config,
)
from mailstack.config import ConfigError, parse
from tests.conftest import free_port, need, run_cli
from tests.daemon_process import DaemonProcess

DOMAIN = "ac-normandie.test"
XSD = Path(__file__).with_name("autoconfig-v1.1.xsd")
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"

CONFIG = f"""
[server]
hostname = "mail.{DOMAIN}"
domains = ["{DOMAIN}", "ac-rouen.test"]
[[imap.listeners]]
port = 143
tls = "starttls"
[[imap.listeners]]
port = 993
tls = "implicit"
[[smtp.listeners]]
kind = "mx"
port = 25
[[smtp.listeners]]
kind = "submission"
port = 587
tls = "starttls"
[[smtp.listeners]]
kind = "submission"
port = 465
tls = "implicit"
"""


def outlook_request(address: str, schema: str = OUTLOOK_RESPONSE_SCHEMA) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="{REQUEST_NS}"><Request>'
        f"<EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()


XXE = (
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<Autodiscover><Request><EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>"
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b"]><Autodiscover><Request><EMailAddress>&lol9;</EMailAddress></Request></Autodiscover>"
)
GARBAGE = bytes(range(256)) * 4


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return settings_from_config(parse(CONFIG, "t.toml", tmp_path_factory.mktemp("cfg")))


# --- reading the Thunderbird document the way Thunderbird does ----------------------------------

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", re.I)


def read_like_thunderbird(data: bytes) -> dict:
    """The checks of readFromXML.sys.mjs (comm-central), in Python: what it
    requires and the values it accepts; anything else would make it throw or
    skip the server."""
    root = ET.fromstring(data)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    assert _HOSTNAME.match(provider.get("id", ""))
    domains = [d.text for d in provider.findall("domain")]
    assert domains and all(_HOSTNAME.match(d or "") for d in domains)

    def server(x: ET.Element, kinds: set[str], auths: set[str]) -> dict:
        assert x.get("type") in kinds
        hostname, port = x.findtext("hostname") or "", int(x.findtext("port") or "0")
        assert _HOSTNAME.match(hostname) and 1 <= port <= 65535
        socket_types = [s.text for s in x.findall("socketType")]
        assert socket_types and socket_types[0] in ("plain", "SSL", "STARTTLS")
        auth = [a.text for a in x.findall("authentication")]
        assert auth and auth[0] in auths
        assert x.findtext("username")
        return {"type": x.get("type"), "hostname": hostname, "port": port, "socketType": socket_types[0],
                "auth": auth[0], "username": x.findtext("username")}

    password = {"password-cleartext", "password-encrypted", "GSSAPI", "NTLM", "OAuth2"}
    incoming = [server(x, {"pop3", "imap", "nntp", "exchange"}, password) for x in provider.findall("incomingServer")]
    outgoing = [server(x, {"smtp"}, password | {"none", "client-IP-address", "smtp-after-pop"}) for x in provider.findall("outgoingServer")]
    assert incoming and outgoing
    return {"id": provider.get("id"), "domains": domains, "incoming": incoming, "outgoing": outgoing}


def xmllint_valid(data: bytes, tmp_path: Path) -> None:
    need(shutil.which("xmllint") is not None, "xmllint (Debian package libxml2-utils)")
    doc = tmp_path / "config-v1.1.xml"
    doc.write_bytes(data)
    r = subprocess.run(["xmllint", "--noout", "--schema", str(XSD), str(doc)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def protocols(data: bytes) -> dict[str, dict[str, str]]:
    root = ET.fromstring(data)
    assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
    response = root.find(f"{{{OUTLOOK_RESPONSE_SCHEMA}}}Response")
    assert response is not None
    ns = {"r": OUTLOOK_RESPONSE_SCHEMA}
    assert response.findtext("r:Account/r:AccountType", namespaces=ns) == "email"
    assert response.findtext("r:Account/r:Action", namespaces=ns) == "settings"
    out = {}
    for p in response.findall("r:Account/r:Protocol", ns):
        fields = {c.tag.rsplit("}", 1)[1]: c.text or "" for c in p}
        assert fields["Type"] not in out, "Outlook takes the first protocol of each type"
        out[fields["Type"]] = fields
    return out


# --- documents ----------------------------------------------------------------------------------------


def test_settings_come_from_the_listeners_never_the_mx_nor_143(settings: Settings) -> None:
    assert (settings.hostname, settings.imaps_port, settings.submission_port, settings.submissions_port) == (
        f"mail.{DOMAIN}", 993, 587, 465)
    assert settings.outgoing() == [(465, True), (587, False)]
    assert nothing_to_serve(settings) is None
    cfg = parse('[server]\ndomains = ["x.fr"]\n[[imap.listeners]]\nport = 143\ntls = "starttls"\n', "t.toml")
    assert "no IMAP listener" in (nothing_to_serve(settings_from_config(cfg)) or "")
    cfg = parse('[server]\ndomains = ["x.fr"]\n[[smtp.listeners]]\nkind = "mx"\nport = 25\n', "t.toml")
    assert "no SMTP listener" in (nothing_to_serve(settings_from_config(cfg)) or "")
    cfg = parse('[server]\ndomains = ["x.fr"]\n[smtp]\nenabled = false\n', "t.toml")
    assert settings_from_config(cfg).outgoing() == []


def test_thunderbird_config_as_thunderbird_reads_it(settings: Settings, tmp_path: Path) -> None:
    data = thunderbird_config(settings.for_request(DOMAIN))
    got = read_like_thunderbird(data)
    assert got["id"] == DOMAIN and got["domains"] == [DOMAIN]
    assert [(s["type"], s["port"], s["socketType"]) for s in got["incoming"]] == [("imap", 993, "SSL")]
    assert [(s["port"], s["socketType"]) for s in got["outgoing"]] == [(465, "SSL"), (587, "STARTTLS")]
    for s in got["incoming"] + got["outgoing"]:
        assert (s["hostname"], s["auth"], s["username"]) == (f"mail.{DOMAIN}", "password-cleartext", "%EMAILLOCALPART%")
    assert b"25<" not in data and b">143<" not in data
    xmllint_valid(data, tmp_path)


def test_outlook_request_parsing_and_response(settings: Settings) -> None:
    assert parse_autodiscover_request(outlook_request("Jean.Dupont@AC-Normandie.test")) == f"jean.dupont@{DOMAIN}"
    # Namespaces and the schema element are not insisted on (clients differ).
    bare = b"<Autodiscover><Request><EMailAddress>a.b@x.fr</EMailAddress></Request></Autodiscover>"
    assert parse_autodiscover_request(bare) == "a.b@x.fr"
    got = protocols(autodiscover_response(settings.for_request(DOMAIN, f"jean.dupont@{DOMAIN}")))
    assert set(got) == {"IMAP", "SMTP"}
    imap, smtp = got["IMAP"], got["SMTP"]
    assert (imap["Server"], imap["Port"], imap["SSL"], imap["Encryption"]) == (f"mail.{DOMAIN}", "993", "on", "SSL")
    assert (smtp["Port"], smtp["SSL"], smtp["Encryption"]) == ("465", "on", "SSL")
    for p in (imap, smtp):
        assert (p["LoginName"], p["SPA"], p["AuthRequired"]) == ("jean.dupont", "off", "on")
    # Submission on 587 only: STARTTLS, which Outlook calls TLS.
    only_587 = Settings(f"mail.{DOMAIN}", DOMAIN, 993, 587, None, f"a@{DOMAIN}")
    smtp = protocols(autodiscover_response(only_587))["SMTP"]
    assert (smtp["Port"], smtp["Encryption"]) == ("587", "TLS")


@pytest.mark.parametrize(
    "body,message",
    [
        (XXE, "DTD"),
        (LAUGHS, "DTD"),
        (b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><Autodiscover/>', "DTD"),
        (GARBAGE, "not well-formed"),
        (b"", "not well-formed"),
        (b"<Autodiscover><Request></Request>", "not well-formed"),
        (b"<Other><Request/></Other>", "expected an <Autodiscover><Request>"),
        (b"<Autodiscover><Request><EMailAddress> </EMailAddress></Request></Autodiscover>", "no <EMailAddress>"),
        (outlook_request("not-an-address"), "local@domain"),
        (outlook_request("a@b.fr", "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"), "only the response schema"),
        (b"<Autodiscover>" + b" " * MAX_REQUEST_BODY + b"</Autodiscover>", "larger than"),
    ],
)
def test_hostile_or_wrong_outlook_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_autodiscover_request(body)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_addresses_and_hosts() -> None:
    assert parse_address(" Anne.Martin@AC-Normandie.TEST ") == "anne.martin@ac-normandie.test"
    assert parse_address("o'brien&co+x@ac-normandie.test") == "o'brien&co+x@ac-normandie.test"
    for bad in ("", "a", "@x.fr", "a@", "a@x", "a..b@x.fr", ".a@x.fr", "a b@x.fr", "a@x..fr", "é@x.fr",
                "a@-x.fr", "<a>@x.fr", "a\n@x.fr", "a" * 65 + "@x.fr", "a@" + "b" * 250 + ".fr"):
        with pytest.raises(BadRequest):
            parse_address(bad)
    assert domain_from_host("autoconfig.ac-normandie.test") == DOMAIN
    assert domain_from_host("AC-Normandie.test:10443") == DOMAIN
    assert domain_from_host("autoconfig.ac-normandie.test.:443") == DOMAIN
    assert domain_from_host("[::1]:443") is None
    assert domain_from_host("bad host") is None


def test_everything_from_the_request_is_escaped(settings: Settings) -> None:
    address = "o'brien&co<x>@ac-normandie.test"  # not plausible: the documents must still be safe
    s = settings.for_request(DOMAIN, address)
    root = ET.fromstring(autodiscover_response(s))
    assert [e.text for e in root.iter() if e.tag.endswith("DisplayName")] == [address]
    assert plistlib.loads(mobileconfig(s))["PayloadContent"][0]["EmailAddress"] == address


def test_mobileconfig_payload(settings: Settings) -> None:
    address = f"jean.dupont@{DOMAIN}"
    data = mobileconfig(settings.for_request(DOMAIN, address))
    profile = plistlib.loads(data)
    assert plistlib.loads(plistlib.dumps(profile)) == profile
    assert (profile["PayloadType"], profile["PayloadVersion"]) == ("Configuration", 1)
    (mail,) = profile["PayloadContent"]
    for key in ("PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"):
        assert profile[key] and mail[key]
    assert mail["PayloadType"] == "com.apple.mail.managed" and mail["PayloadVersion"] == 1
    assert mail["EmailAccountType"] == "EmailTypeIMAP" and mail["EmailAddress"] == address
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (f"mail.{DOMAIN}", 993)
    assert mail["IncomingMailServerUseSSL"] is True and mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (f"mail.{DOMAIN}", 465)
    assert mail["OutgoingMailServerUseSSL"] is True and mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"] == "jean.dupont"
    assert mail["OutgoingPasswordSameAsIncomingPassword"] is True
    # UUIDs: valid, stable per address, distinct between addresses and between the two payloads.
    assert uuid.UUID(profile["PayloadUUID"]) != uuid.UUID(mail["PayloadUUID"])
    assert plistlib.loads(mobileconfig(settings.for_request(DOMAIN, address))) == profile
    assert profile_uuids(address) != profile_uuids(f"anne.martin@{DOMAIN}")
    assert mail["PayloadIdentifier"].startswith(profile["PayloadIdentifier"])


def test_http_listeners_join_the_duplicate_address_check(tmp_path: Path) -> None:
    cfg = parse('[server]\ndomains = ["x.fr"]\n', "t.toml", tmp_path)
    assert [(x.address, x.port, x.tls) for x in cfg.http.listeners] == [("0.0.0.0", 443, "implicit")]
    with pytest.raises(ConfigError, match=r"http.listeners\[0\]: 0.0.0.0 port 993 is already used"):
        parse('[server]\ndomains = ["x.fr"]\n[[http.listeners]]\nport = 993\n', "t.toml", tmp_path)
    with pytest.raises(ConfigError, match="http.listeners.0..tls: expected one of 'implicit', 'none'"):
        parse('[server]\ndomains = ["x.fr"]\n[[http.listeners]]\nport = 8443\ntls = "starttls"\n', "t.toml", tmp_path)


# --- a real mailstack httpd -----------------------------------------------------------------------------


class HttpServer(DaemonProcess):
    command = "httpd"

    def __init__(self, home: Path, port: int):
        super().__init__(home, [port])
        self.port = port

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def fetch(self, path: str, data: bytes | None = None, host: str | None = None, method: str | None = None):
        """(status, headers, body) over HTTPS, checked against the home's CA."""
        req = urllib.request.Request(self.url(path), data=data, method=method, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(req, context=self.context(), timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def wait_for_log(self, text: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = self.log_path.read_text()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log:\n{self.log_path.read_text()}")


@pytest.fixture(scope="module")
def httpd(tmp_path_factory):
    home = tmp_path_factory.mktemp("autoconfig") / "home"
    r = run_cli("init", "--home", str(home), "--domain", DOMAIN, "--dev", "--hostname", "localhost")
    assert r.returncode == 0, r.stderr
    port = free_port()
    cfg = home / "mailstack.toml"
    assert "port = 10443" in cfg.read_text()  # mailstack init --dev: HTTPS on 10443
    cfg.write_text(cfg.read_text().replace("port = 10443", f"port = {port}"))
    os.environ.pop("MAILSTACK_CONFIG", None)
    srv = HttpServer(home, port)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def dev_ports(srv: HttpServer) -> dict[str, int]:
    cfg = tomllib.loads(srv.config.read_text())
    imap = {x["tls"]: x["port"] for x in cfg["imap"]["listeners"]}
    sub = {x["tls"]: x["port"] for x in cfg["smtp"]["listeners"] if x["kind"] == "submission"}
    return {"imaps": imap["implicit"], "submissions": sub["implicit"], "submission": sub["starttls"]}


def test_thunderbird_both_paths_with_and_without_address(httpd: HttpServer) -> None:
    ports = dev_ports(httpd)
    assert ports == {"imaps": 10993, "submissions": 10465, "submission": 10587}
    for path, host in [
        (f"/mail/config-v1.1.xml?emailaddress=jean.dupont%40{DOMAIN}", None),
        ("/mail/config-v1.1.xml", f"autoconfig.{DOMAIN}"),
        (f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=jean.dupont@{DOMAIN}", None),
        ("/.well-known/autoconfig/mail/config-v1.1.xml", f"{DOMAIN}:{httpd.port}"),
    ]:
        status, headers, body = httpd.fetch(path, host=host)
        assert status == 200, (path, body)
        assert headers.get_content_type() in ("application/xml", "text/xml")
        assert "Server" not in headers
        got = read_like_thunderbird(body)
        assert got["domains"] == [DOMAIN]
        assert [(s["hostname"], s["port"], s["socketType"]) for s in got["incoming"]] == [("localhost", ports["imaps"], "SSL")]
        assert [(s["port"], s["socketType"]) for s in got["outgoing"]] == [
            (ports["submissions"], "SSL"), (ports["submission"], "STARTTLS")]
    log = httpd.wait_for_log(f"http client=127.0.0.1 method=GET path=/mail/config-v1.1.xml status=200 domain={DOMAIN}")
    assert "jean.dupont" not in log  # addresses are personal data: the log names the domain only


def test_outlook_autodiscover(httpd: HttpServer) -> None:
    ports = dev_ports(httpd)
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        status, headers, body = httpd.fetch(path, data=outlook_request(f"Jean.Dupont@{DOMAIN}"))
        assert status == 200, body
        assert headers.get_content_type() in ("application/xml", "text/xml")
        got = protocols(body)
        assert (got["IMAP"]["Server"], got["IMAP"]["Port"], got["IMAP"]["LoginName"]) == ("localhost", str(ports["imaps"]), "jean.dupont")
        assert (got["SMTP"]["Port"], got["SMTP"]["Encryption"]) == (str(ports["submissions"]), "SSL")
    status, headers, _ = httpd.fetch("/autodiscover/autodiscover.xml")
    assert status == 405 and headers["Allow"] == "POST"


def test_apple_mobileconfig(httpd: HttpServer) -> None:
    status, headers, body = httpd.fetch(f"/apple/mail.mobileconfig?emailaddress=jean.dupont@{DOMAIN}")
    assert status == 200, body
    assert headers["Content-Type"] == "application/x-apple-aspen-config"
    assert headers["Content-Disposition"] == f'attachment; filename="mail-{DOMAIN}.mobileconfig"'
    (mail,) = plistlib.loads(body)["PayloadContent"]
    assert (mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"]) == (10993, 10465)
    status, _, body = httpd.fetch("/apple/mail.mobileconfig")
    assert status == 400 and body.count(b"\n") == 1


def test_unknown_domains_paths_and_methods(httpd: HttpServer) -> None:
    assert httpd.fetch("/mail/config-v1.1.xml", host="autoconfig.example.org")[0] == 404
    assert httpd.fetch("/mail/config-v1.1.xml?emailaddress=a@example.org")[0] == 404
    assert httpd.fetch("/autodiscover/autodiscover.xml", data=outlook_request("a@example.org"))[0] == 404
    assert httpd.fetch("/apple/mail.mobileconfig?emailaddress=a@example.org")[0] == 404
    for path in ("/", "/mail/", "/mail/config-v1.1.xml/", "/.well-known/", "/../etc/passwd", "/index.html"):
        status, headers, _ = httpd.fetch(path, host=f"autoconfig.{DOMAIN}")
        assert status == 404, path
        assert "Server" not in headers
    assert httpd.fetch("/mail/config-v1.1.xml", method="DELETE")[0] == 405
    status, _, body = httpd.fetch("/mail/config-v1.1.xml?emailaddress=%3Cscript%3E")
    assert status == 400 and body == b"the address is not of the form local@domain\n"


def _raw_post(srv: HttpServer, headers: dict[str, str], chunks: list[bytes] = ()) -> int | None:
    """A POST written by hand; the status, or None when the server closed first."""
    conn = http.client.HTTPSConnection("localhost", srv.port, context=srv.context(), timeout=30)
    try:
        conn.putrequest("POST", "/autodiscover/autodiscover.xml")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        for c in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(c), c))
        return conn.getresponse().status
    except (ConnectionError, ssl.SSLError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_hostile_requests_get_4xx_and_the_daemon_goes_on(httpd: HttpServer) -> None:
    for body in (XXE, LAUGHS, GARBAGE, b"<Autodiscover>", outlook_request("a@b@c")):
        status, _, text = httpd.fetch("/autodiscover/autodiscover.xml", data=body)
        assert status == 400 and text.count(b"\n") == 1, (body[:40], text)
    # A body announced too large: 413 before it is sent (the client waits for 100 Continue).
    assert _raw_post(httpd, {"Content-Length": "1000000", "Expect": "100-continue"}) == 413
    # One that grows too large in chunked encoding: 413, or the connection closed under the sender.
    status = _raw_post(httpd, {"Transfer-Encoding": "chunked"}, [b"x" * 4096] * 16)
    assert status in (413, None)
    httpd.wait_for_log("status=413")
    # A broken TLS handshake, then gone.
    with socket.create_connection(("127.0.0.1", httpd.port)) as s:
        s.sendall(b"\x16\x03\x01\x00\x05garbage")
    status, _, body = httpd.fetch(f"/mail/config-v1.1.xml?emailaddress=a@{DOMAIN}")
    assert status == 200 and httpd.proc.poll() is None
    assert "Traceback" not in httpd.log_path.read_text()


def test_reload_keeps_serving(httpd: HttpServer) -> None:
    httpd.proc.send_signal(signal.SIGHUP)
    httpd.wait_for_log("reload: certificate")
    assert httpd.fetch("/mail/config-v1.1.xml", host=f"autoconfig.{DOMAIN}")[0] == 200


def test_httpd_refuses_to_start_with_nothing_to_advertise(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[server]\ndomains = ["{DOMAIN}"]\n[[imap.listeners]]\nport = 143\ntls = "starttls"\n')
    r = run_cli("-c", str(cfg), "httpd")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "no IMAP listener" in r.stderr and "Traceback" not in r.stderr

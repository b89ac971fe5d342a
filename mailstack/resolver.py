"""DNS resolvers configured from ``[dns]``: one place for every lookup.

MX lookups (the queue), SPF, DKIM and DMARC (libraries that call
dnspython's module-level functions) and ``mailstack dns --check`` all ask the
same resolvers, so a test or an operator points them elsewhere in one key.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.resolver

from .config import DnsConfig


def _configure(r: dns.resolver.Resolver, cfg: DnsConfig) -> None:
    if cfg.nameservers:
        r.nameservers = list(cfg.nameservers)
        r.port = cfg.port
    elif cfg.port != 53:
        r.port = cfg.port
    r.lifetime = cfg.timeout
    r.timeout = min(cfg.timeout, 2.0)
    r.cache = dns.resolver.LRUCache(10000)


def make_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=not cfg.nameservers)
    _configure(r, cfg)
    return r


def make_async_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
    _configure(r, cfg)
    return r


def install(cfg: DnsConfig) -> dns.resolver.Resolver:
    """Make the configured resolver dnspython's default in this process:
    pyspf, dkimpy and authheaders resolve through ``dns.resolver.resolve``."""
    r = make_resolver(cfg)
    dns.resolver.default_resolver = r
    return r

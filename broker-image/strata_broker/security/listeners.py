"""Listeners: where the broker accepts clients, with which security protocol, advertised as what."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass, field

from ..config import (
    SECURITY_PROTOCOLS,
    BrokerConfig,
    ConfigError,
    parse_client_auth_map,
    parse_listeners,
    parse_protocol_map,
)

log = logging.getLogger(__name__)


@dataclass
class Listener:
    name: str
    protocol: str  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    host: str
    port: int
    advertised: tuple[str, int] | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def advertised_host(self) -> str:
        if self.advertised:
            return self.advertised[0]
        if self.host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.host

    @property
    def advertised_port(self) -> int:
        return self.advertised[1] if self.advertised else self.port


def build_listeners(config: BrokerConfig, listen: list[str], advertise: list[str]) -> list[Listener]:
    """`--listen` entries (HOST:PORT = PLAINTEXT, or NAME://HOST:PORT) plus the `listeners` property.

    `--advertise HOST:PORT` applies to the first listener; `NAME://HOST:PORT` to the named one;
    `advertised.listeners` likewise by name.
    """
    specs = list(parse_listeners(",".join(listen))) + list(parse_listeners(config["listeners"]))
    if not specs:
        specs = list(parse_listeners("PLAINTEXT://127.0.0.1:9092"))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"listener names must be unique, got {names}")
    protocols = {p: p for p in SECURITY_PROTOCOLS}
    protocols.update(parse_protocol_map(config["listener.security.protocol.map"]))
    listeners = []
    for spec in specs:
        if spec.name not in protocols:
            raise ConfigError(f"listener {spec.name} has no security protocol "
                              "(name it after one, or map it in listener.security.protocol.map)")
        listeners.append(Listener(spec.name, protocols[spec.name], spec.host, spec.port))
    by_name = {lst.name: lst for lst in listeners}
    for i, text in enumerate(list(advertise) + [config["advertised.listeners"]]):
        for part in text.split(","):
            if not part.strip():
                continue
            explicit = "://" in part
            (adv,) = parse_listeners(part)
            target = by_name.get(adv.name) if (explicit or i >= len(advertise)) else listeners[0]
            if target is None:
                raise ConfigError(f"advertised listener {adv.name} is not a listener")
            target.advertised = (adv.host, adv.port)
    modes = parse_client_auth_map(config["ssl.client.auth.listener.map"])
    unknown = sorted(set(modes) - set(by_name))
    if unknown:
        raise ConfigError(f"ssl.client.auth.listener.map names {unknown}, which are not listeners")
    contexts: dict[str, ssl.SSLContext] = {}  # one per client-auth mode
    for lst in listeners:
        if lst.tls:
            mode = modes.get(lst.name, config["ssl.client.auth"])
            if mode not in contexts:
                contexts[mode] = ssl_context(config, mode)
            lst.ssl_context = contexts[mode]
    return listeners


def ssl_context(config: BrokerConfig, mode: str | None = None) -> ssl.SSLContext:
    """The server context of TLS listeners; `mode` (none | requested | required) defaults to
    ssl.client.auth."""
    cert = config["ssl.certificate.location"]
    if not cert:
        raise ConfigError("an SSL or SASL_SSL listener needs ssl.certificate.location")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, config["ssl.key.location"] or None, config["ssl.key.password"] or None)
    mode = mode or config["ssl.client.auth"]
    if mode != "none":
        if not config["ssl.ca.location"]:
            raise ConfigError("ssl.client.auth needs ssl.ca.location")
        context.load_verify_locations(config["ssl.ca.location"])
        context.verify_mode = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL
    return context


def principal_from_cert(peercert: dict | None) -> str | None:
    """`User:<CN>` of a verified client certificate, else None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return f"User:{value}"
    return None


class TlsReloader:
    """Puts renewed certificate files into the TLS listeners' live contexts (new connections use them).

    The files' (inode, mtime, size) are polled (a Secret volume update swaps a symlink); a change is
    first loaded into a scratch context, so a half-written or mismatched pair is logged and the previous
    certificate kept. CAs are added to the trust store, never removed (until a restart)."""

    def __init__(self, config: BrokerConfig, listeners: list[Listener]) -> None:
        self.config = config
        self.contexts = {id(lst.ssl_context): lst.ssl_context for lst in listeners if lst.ssl_context}
        self.paths = [p for p in (config["ssl.certificate.location"], config["ssl.key.location"],
                                  config["ssl.ca.location"]) if p]
        self._stamp = self._stamps()
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def poll(self) -> bool:
        """Reload when a file changed; True when the contexts got the new certificate."""
        stamp = self._stamps()
        if stamp == self._stamp or not self.contexts:
            return False
        self._stamp = stamp
        try:
            ssl_context(self.config, "required" if self.config["ssl.ca.location"] else "none")
        except (OSError, ssl.SSLError, ConfigError) as exc:
            log.error("the changed certificate files do not load, keeping the previous certificate: %s", exc)
            return False
        cert, key = self.config["ssl.certificate.location"], self.config["ssl.key.location"] or None
        for context in self.contexts.values():
            context.load_cert_chain(cert, key, self.config["ssl.key.password"] or None)
            if self.config["ssl.ca.location"] and context.verify_mode != ssl.CERT_NONE:
                context.load_verify_locations(self.config["ssl.ca.location"])
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", cert)
        return True

"""Helpers for the security tests: a throwaway PKI, a credentials file, and client settings for
kafka-python, confluent-kafka and aiokafka on any listener type."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, client_cn: str = "alice", server_client_auth: bool = False) -> Pki:
    """A self-signed CA, a server certificate for 127.0.0.1/localhost and a client certificate.
    With `server_client_auth` the server certificate may also authenticate a client (both extended
    key usages, as a broker's needs to open TLS to another broker's listener requiring certificates)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("strata-test-ca")).issuer_name(name("strata-test-ca"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def issue(cn: str, server: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            usages = [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
            if server_client_auth:
                usages.append(x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
        else:
            usages = [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
              directory / "client.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = issue("localhost", True)
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, pki.server_key)
    client_key, client_cert = issue(client_cn, False)
    pki.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(client_key, pki.client_key)
    return pki


def ssl_settings(pki: Pki, client_auth: str = "requested") -> dict[str, str]:
    return {"ssl.certificate.location": str(pki.server_cert), "ssl.key.location": str(pki.server_key),
            "ssl.ca.location": str(pki.ca), "ssl.client.auth": client_auth}


def write_credentials(path: Path, users: dict[str, str]) -> None:
    """Replace the file the way a Secret volume update does: a new file renamed into place."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"users": {u: {"password": p} for u, p in users.items()}}))
    os.replace(tmp, path)
    now = time.time()
    os.utime(path, (now, now))


@dataclass
class Auth:
    protocol: str  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    mechanism: str | None = None
    user: str | None = None
    password: str | None = None
    pki: Pki | None = None
    client_cert: bool = False


def kafka_python(bootstrap: str, auth: Auth) -> dict[str, Any]:
    out: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": auth.protocol}
    if auth.mechanism:
        out.update(sasl_mechanism=auth.mechanism, sasl_plain_username=auth.user, sasl_plain_password=auth.password)
    if auth.pki:
        out.update(ssl_cafile=str(auth.pki.ca), ssl_check_hostname=True)
        if auth.client_cert:
            out.update(ssl_certfile=str(auth.pki.client_cert), ssl_keyfile=str(auth.pki.client_key))
    return out


def confluent(bootstrap: str, auth: Auth) -> dict[str, Any]:
    out: dict[str, Any] = {"bootstrap.servers": bootstrap, "security.protocol": auth.protocol}
    if auth.mechanism:
        out.update({"sasl.mechanism": auth.mechanism, "sasl.username": auth.user, "sasl.password": auth.password})
    if auth.pki:
        out["ssl.ca.location"] = str(auth.pki.ca)
        if auth.client_cert:
            out.update({"ssl.certificate.location": str(auth.pki.client_cert),
                        "ssl.key.location": str(auth.pki.client_key)})
    return out


def aiokafka(bootstrap: str, auth: Auth) -> dict[str, Any]:
    out: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": auth.protocol}
    if auth.mechanism:
        out.update(sasl_mechanism=auth.mechanism, sasl_plain_username=auth.user, sasl_plain_password=auth.password)
    if auth.pki:
        context = ssl.create_default_context(cafile=str(auth.pki.ca))
        if auth.client_cert:
            context.load_cert_chain(str(auth.pki.client_cert), str(auth.pki.client_key))
        out["ssl_context"] = context
    return out

"""SCRAM-SHA-256/512 (RFC 5802, RFC 7677): credentials and the server side of the exchange.

The credential itself (what Kafka stores, never the password) is `strata_contract.scram`, shared
with the operator, which writes the brokers' credentials file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from strata_contract.scram import HASHES, MIN_ITERATIONS, ScramCredential

# Kafka's ScramMechanism ids (DescribeUserScramCredentials / AlterUserScramCredentials).
MECHANISM_IDS = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
MECHANISM_NAMES = {v: k for k, v in MECHANISM_IDS.items()}


class ScramError(Exception):
    """The exchange failed; the message is safe to show the client."""


def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError("malformed SCRAM message")
        out.append((key, value))
    return out


def _saslname(value: str) -> str:
    # RFC 5802: "=2C" is ",", "=3D" is "=", any other "=" is an error.
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise ScramError("malformed user name")
    return value.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM exchange: client-first -> server-first, client-final -> server-final (or failure).

    `lookup(user)` returns the user's credential or None. An unknown user is shown `decoy(user)`'s
    salt and iterations (CredentialStore.decoy: secret-keyed, the usual count) and fails only at the
    proof, so the exchange does not reveal which users exist. Without `decoy`, a random salt per
    exchange and MIN_ITERATIONS.
    """

    def __init__(self, mechanism: str, lookup, decoy=None) -> None:  # type: ignore[no-untyped-def]
        self.mechanism = mechanism
        self.hash = HASHES[mechanism]
        self._lookup = lookup
        self._decoy = decoy
        self.state = 0
        self.user: str | None = None
        self._credential: ScramCredential | None = None
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """The server's answer to `token`, and whether the exchange completed successfully."""
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("SCRAM message is not UTF-8") from None
        if self.state == 0:
            self.state = 1
            return self._first(text), False
        if self.state == 1:
            self.state = 2
            return self._final(text), True
        raise ScramError("SCRAM exchange already finished")

    def _first(self, text: str) -> bytes:
        cbind, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2 or cbind not in ("n", "y"):
            raise ScramError("unsupported or malformed GS2 header (channel binding is not offered)")
        if authzid and not authzid.startswith("a="):
            raise ScramError("malformed GS2 header")
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramError("client-first-message needs n= and r=")
        if any(k == "m" for k, _ in attrs):
            raise ScramError("mandatory extensions are not supported")
        user = _saslname(attrs[0][1])
        if not user:
            raise ScramError("empty user name")
        if authzid and _saslname(authzid[2:]) != user:
            raise ScramError("authorization id must match the user name")
        if any(ord(c) < 0x21 or ord(c) > 0x7E or c == "," for c in attrs[1][1]):
            raise ScramError("malformed client nonce")
        self.user = user
        self._credential = self._lookup(user)
        cred = self._credential
        if cred is None:  # unknown user: the same shape of answer, the proof will never match
            if self._decoy is not None:
                decoy = self._decoy(user)
                salt, iterations = decoy.salt, decoy.iterations
            else:
                salt, iterations = os.urandom(24), MIN_ITERATIONS
        else:
            salt, iterations = cred.salt, cred.iterations
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare
        self._nonce = attrs[1][1] + secrets.token_urlsafe(24)
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        return self._server_first.encode()

    def _final(self, text: str) -> bytes:
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("client-final-message has no proof")
        attrs = _attributes(without_proof)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramError("client-final-message needs c= and r=")
        try:
            binding = base64.b64decode(attrs[0][1], validate=True).decode()
            proof = base64.b64decode(proof_b64, validate=True)
        except (ValueError, UnicodeDecodeError):
            raise ScramError("malformed base64 in client-final-message") from None
        if binding != self._gs2_header:
            raise ScramError("channel binding does not match the GS2 header")
        if attrs[1][1] != self._nonce:
            raise ScramError("nonce mismatch")
        cred = self._credential
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        if cred is None:
            raise ScramError("authentication failed: invalid credentials")
        signature = hmac.new(cred.stored_key, auth_message, self.hash).digest()
        if len(proof) != len(signature):
            raise ScramError("authentication failed: invalid credentials")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.hash, client_key).digest(), cred.stored_key):
            raise ScramError("authentication failed: invalid credentials")
        server_signature = hmac.new(cred.server_key, auth_message, self.hash).digest()
        return b"v=" + base64.b64encode(server_signature)

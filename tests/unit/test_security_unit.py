"""Unit tests of the security building blocks: SCRAM, the authorizer, quotas, credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka.net.sasl.scram import ScramClient
from strata_broker.security import acl as A
from strata_broker.security.credentials import CredentialStore
from strata_broker.security.quotas import PRODUCER, QuotaManager, make_entity
from strata_broker.security.scram import ScramError, ScramServer
from strata_contract.scram import ScramCredential


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_against_kafka_pythons_client(mechanism: str) -> None:
    cred = ScramCredential.from_password(mechanism, "pencil")
    server = ScramServer(mechanism, lambda user: cred if user == "user" else None)
    client = ScramClient("user", "pencil", mechanism)
    first, done = server.step(client.first_message())
    assert not done
    client.process_server_first_message(first)
    final, done = server.step(client.final_message())
    assert done and server.user == "user"
    client.process_server_final_message(final)  # raises if the server signature is wrong


@pytest.mark.parametrize("user,password", [("user", "wrong"), ("nobody", "pencil")])
def test_scram_rejects_bad_password_and_unknown_user_alike(user: str, password: str) -> None:
    cred = ScramCredential.from_password("SCRAM-SHA-512", "pencil")
    server = ScramServer("SCRAM-SHA-512", lambda u: cred if u == "user" else None)
    client = ScramClient(user, password, "SCRAM-SHA-512")
    client.process_server_first_message(server.step(client.first_message())[0])  # same shape for both
    with pytest.raises(ScramError):
        server.step(client.final_message())


@pytest.mark.parametrize("token", [b"", b"p=tls-unique,,n=u,r=x", b"n,,n=u", b"n,,r=x,n=u", b"n,,n=a=4Xb,r=x",
                                   b"\xff\xfe", b"n,,n=u,r=x,m=ext"])
def test_scram_rejects_malformed_first_messages(token: bytes) -> None:
    with pytest.raises(ScramError):
        ScramServer("SCRAM-SHA-256", lambda u: None).step(token)


def _acl(principal: str, op: int, name: str, pattern: int = A.PAT_LITERAL, perm: int = A.PERM_ALLOW,
         rtype: int = A.RES_TOPIC, host: str = "*") -> A.Acl:
    return A.Acl(rtype, name, pattern, principal, host, op, perm)


def test_authorizer_semantics(tmp_path: Path) -> None:
    auth = A.Authorizer(True, "User:root", False, str(tmp_path))
    assert not auth.authorize("User:a", "1.2.3.4", A.OP_READ, A.RES_TOPIC, "t")  # no ACL: denied
    assert auth.authorize("User:root", "1.2.3.4", A.OP_READ, A.RES_TOPIC, "t")  # super user
    auth.add([_acl("User:a", A.OP_WRITE, "orders")])
    assert auth.authorize("User:a", "h", A.OP_WRITE, A.RES_TOPIC, "orders")
    assert auth.authorize("User:a", "h", A.OP_DESCRIBE, A.RES_TOPIC, "orders")  # Write implies Describe
    assert not auth.authorize("User:a", "h", A.OP_READ, A.RES_TOPIC, "orders")
    assert not auth.authorize("User:b", "h", A.OP_WRITE, A.RES_TOPIC, "orders")
    auth.add([_acl("User:*", A.OP_READ, "pub.", A.PAT_PREFIXED)])
    assert auth.authorize("User:b", "h", A.OP_READ, A.RES_TOPIC, "pub.x")
    assert not auth.authorize("User:b", "h", A.OP_READ, A.RES_TOPIC, "pu")
    auth.add([_acl("User:b", A.OP_ALL, "pub.secret", perm=A.PERM_DENY)])  # deny wins
    assert not auth.authorize("User:b", "h", A.OP_READ, A.RES_TOPIC, "pub.secret")
    auth.add([_acl("User:c", A.OP_ALL, "*", host="10.0.0.1")])  # wildcard resource, one host
    assert auth.authorize("User:c", "10.0.0.1", A.OP_DELETE, A.RES_TOPIC, "anything")
    assert not auth.authorize("User:c", "10.0.0.2", A.OP_DELETE, A.RES_TOPIC, "anything")
    assert auth.authorize_any("User:a", "h", A.OP_WRITE, A.RES_TOPIC)
    # Persisted; removal by filter.
    again = A.Authorizer(True, "", False, str(tmp_path))
    assert again.acls == auth.acls
    gone = again.remove(A.AclFilter(A.RES_ANY, None, A.PAT_ANY, "User:b", None, A.OP_ANY, A.PERM_ANY))
    assert len(gone) == 1 and not A.Authorizer(True, "", False, str(tmp_path)).describe(
        A.AclFilter(A.RES_ANY, None, A.PAT_ANY, "User:b", None, A.OP_ANY, A.PERM_ANY))


def test_allow_everyone_if_no_acl_found(tmp_path: Path) -> None:
    auth = A.Authorizer(True, "", True, None)
    assert auth.authorize("User:x", "h", A.OP_WRITE, A.RES_TOPIC, "t")
    auth.add([_acl("User:y", A.OP_WRITE, "t")])
    assert not auth.authorize("User:x", "h", A.OP_WRITE, A.RES_TOPIC, "t")  # the topic has ACLs now


def test_invalid_acls_are_refused() -> None:
    with pytest.raises(A.InvalidAcl):
        _acl("User:a", A.OP_WRITE, "x", rtype=A.RES_GROUP).validate()  # Write is not a group operation
    with pytest.raises(A.InvalidAcl):
        _acl("nobody", A.OP_READ, "x").validate()
    with pytest.raises(A.InvalidAcl):
        _acl("User:a", A.OP_ALTER, "other", rtype=A.RES_CLUSTER).validate()


def test_quota_resolution_and_throttle() -> None:
    q = QuotaManager(None, window_s=1.0, num=11)
    q.alter(make_entity({"user": None}), [(PRODUCER, 1000.0, False)])
    q.alter(make_entity({"user": "alice", "client-id": "fast"}), [(PRODUCER, 10_000.0, False)])
    assert q.resolve(PRODUCER, "alice", "fast") == (10_000.0, ("alice", "fast"))
    assert q.resolve(PRODUCER, "bob", "any") == (1000.0, ("bob", ""))  # default user: a bucket per user
    assert q.resolve(PRODUCER, "", "x") == (1000.0, ("", ""))
    assert q.record_produce("bob", "c", 500, now=100.0) == 0
    # 3000 bytes at 1000 B/s measured over 1 s: the rate falls back to quota after 2 s more.
    assert q.record_produce("bob", "c", 2500, now=100.0) == 2000
    assert q.record_produce("bob", "c", 0, now=103.0) == 0
    q.alter(make_entity({"user": None}), [(PRODUCER, 0.0, True)])
    assert q.resolve(PRODUCER, "bob", "any") is None


def test_credentials_file_and_api_users(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    salted = ScramCredential.from_password("SCRAM-SHA-512", "hashed-pw")
    path.write_text(json.dumps({"users": {"plain": {"password": "pw"},
                                          "hashed": {"scram": {"SCRAM-SHA-512": salted.to_json()}}}}))
    meta = tmp_path / "meta"
    meta.mkdir()
    store = CredentialStore(str(path), str(meta))
    assert store.check_plain("plain", "pw") and not store.check_plain("plain", "nope")
    assert store.check_plain("hashed", "hashed-pw")
    assert store.scram("hashed", "SCRAM-SHA-256") is None
    assert store.scram("plain", "SCRAM-SHA-256") is not None
    store.upsert("plain", "SCRAM-SHA-256", ScramCredential.from_password("SCRAM-SHA-256", "new"))
    store.save()
    assert not store.check_plain("plain", "pw") and store.check_plain("plain", "new")  # the API entry wins
    assert CredentialStore(str(path), str(meta)).check_plain("plain", "new")  # persisted
    path.write_text("{not json")
    assert not store.poll() and store.check_plain("hashed", "hashed-pw")  # a broken file keeps the users

"""`strata schema ls|show|check` against a real strata-registry and broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from brokerproc import BrokerProcess
from click.testing import CliRunner
from registryproc import RegistryProcess
from strata_cli.main import main
from waiting import wait_until

V1 = {"type": "record", "name": "Order", "namespace": "shop", "fields": [{"name": "id", "type": "long"}]}
V2_OK = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string", "default": ""}]}
V2_BAD = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string"}]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    base = tmp_path_factory.mktemp("schema-cli")
    broker = BrokerProcess(base / "broker", settings={"schema.registry.principal": "User:ANONYMOUS"}).start()
    reg = RegistryProcess(broker.bootstrap, base / "registry.log").start()
    wait_until(reg.leads, 30, "the registry to lead")
    status, body = reg.request("POST", "/subjects/orders-value/versions", {"schema": json.dumps(V1)})
    assert status == 200, body
    status, body = reg.request("POST", "/subjects/events-value/versions",
                               {"schema": json.dumps({"type": "object"}), "schemaType": "JSON"})
    assert status == 200, body
    yield reg
    reg.stop()
    broker.stop()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_ls_and_show(registry):
    code, out = run("schema", "ls", "--registry", registry.url, "--json")
    assert code == 0, out
    rows = {r["subject"]: r for r in json.loads(out)}
    assert rows["orders-value"]["versions"] == [1] and rows["orders-value"]["type"] == "AVRO"
    assert rows["events-value"]["type"] == "JSON" and rows["orders-value"]["compatibility"] == "BACKWARD"
    code, out = run("schema", "ls", "--registry", registry.url)
    assert code == 0 and "orders-value" in out and "events-value" in out
    code, out = run("schema", "show", "orders-value", "--registry", registry.url)
    assert code == 0 and '"name": "Order"' in out and "version 1" in out
    code, out = run("schema", "show", "nosuch", "--registry", registry.url)
    assert code == 2 and "Subject 'nosuch' not found" in out and "40401" in out


def test_check_compatible_incompatible_invalid(registry, tmp_path):
    ok, bad, broken = tmp_path / "ok.avsc", tmp_path / "bad.avsc", tmp_path / "broken.avsc"
    ok.write_text(json.dumps(V2_OK))
    bad.write_text(json.dumps(V2_BAD))
    broken.write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nosuch"}]}')
    before = registry.get("/subjects/orders-value/versions")
    code, out = run("schema", "check", str(ok), "--subject", "orders-value", "--registry", registry.url)
    assert code == 0 and "compatible with orders-value (BACKWARD)" in out, out
    code, out = run("schema", "check", str(bad), "--subject", "orders-value", "--registry", registry.url, "--json")
    assert code == 1, out
    result = json.loads(out)
    assert result["is_compatible"] is False and "READER_FIELD_MISSING_DEFAULT_VALUE" in " ".join(result["messages"])
    code, out = run("schema", "check", str(broken), "--subject", "orders-value", "--registry", registry.url)
    assert code == 2 and "42201" in out
    # A new subject has nothing to be incompatible with; nothing was registered by any check.
    code, out = run("schema", "check", str(bad), "--subject", "new-value", "--registry", registry.url)
    assert code == 0, out
    assert registry.get("/subjects/orders-value/versions") == before
    assert "new-value" not in registry.get("/subjects")

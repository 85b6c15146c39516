"""The CRDs: one source (strata_operator/crds.py), rendered to crds/ (and the chart's copy),
structural, and enforcing what admission can check. Examples validate; invalid specs kept in
tests/operator_invalid/ are rejected with a message naming the problem.

OpenAPI validation uses `jsonschema` on each CRD's openAPIV3Schema, with unknown fields rejected
as `kubectl apply` does (strict field validation). CEL rules (x-kubernetes-validations) are
evaluated with cel-python (celpy), which covers the subset of CEL these rules use; the API server
also evaluates them at admission.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from strata_operator import crds

ROOT = Path(__file__).resolve().parents[1]
INVALID = Path(__file__).parent / "operator_invalid"
STRIMZI_SHORT_NAMES = {"k", "kt", "ku", "kc", "kmm", "kmm2", "kb", "kctr", "kr", "knp", "kafka"}
ALLOWED_KEYS = {"type", "description", "properties", "required", "items", "additionalProperties", "enum", "default",
                "pattern", "minimum", "maximum", "minLength", "maxLength", "maxItems", "format", "anyOf",
                "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}
BY_KIND = {c["spec"]["names"]["kind"]: c for c in crds.all_crds().values()}


def test_committed_crds_equal_the_rendered_ones():
    problems = crds.diff(ROOT / "crds")
    assert not problems, "crds/ is stale; run `python -m strata_operator.crds`:\n" + "\n".join(problems)


def test_every_copy_in_the_chart_equals_the_rendered_ones():
    copies = [p for p in (ROOT / "charts").glob("*/crds") if p.is_dir()] if (ROOT / "charts").exists() else []
    for directory in copies:
        problems = crds.diff(directory)
        assert not problems, f"{directory} differs from crds.py:\n" + "\n".join(problems)


def test_render_command_check_mode(tmp_path):
    assert crds.main([str(tmp_path)]) == 0
    assert crds.main([str(tmp_path), "--check"]) == 0
    (tmp_path / "strata.dev_topics.yaml").write_text("# edited\n")
    assert crds.main([str(tmp_path), "--check"]) == 1


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_crd_is_structural_with_status_columns_and_short_names(kind):
    crd = BY_KIND[kind]
    assert crd["spec"]["group"] == "strata.dev"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not set(node) - ALLOWED_KEYS, (path, set(node) - ALLOWED_KEYS)
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}, path
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"
    short = set(crd["spec"]["names"]["shortNames"])
    assert short and not short & STRIMZI_SHORT_NAMES
    assert any(node.get("x-kubernetes-validations") for _, node in _walk(schema["properties"]["spec"]))


def test_short_names_are_distinct():
    names = [n for c in BY_KIND.values() for n in c["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))


# -- a small admission emulation: OpenAPI (strict) + CEL -------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as kubectl's strict field validation sees it: unknown fields are errors."""
    schema = copy.deepcopy(schema)
    for _, node in _walk(schema):
        if node.get("type") == "object" and "properties" in node and not node.get(
                "x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            node["additionalProperties"] = False
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


_SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(text: Any) -> celpy.celtypes.DoubleType:
    """Kubernetes' CEL quantity(): the value of a quantity string (compared with compareTo)."""
    number = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(text))
    assert number and number.group(2) in _SUFFIXES, f"not a quantity: {text!r}"
    return celpy.celtypes.DoubleType(float(Decimal(number.group(1)) * _SUFFIXES[number.group(2)]))


def _compare_to(a: Any, b: Any) -> celpy.celtypes.IntType:
    return celpy.celtypes.IntType((a > b) - (a < b))


# The Kubernetes CEL library functions the rules use, beyond standard CEL.
CEL_FUNCTIONS = {"quantity": _quantity, "compareTo": _compare_to}


def _cel_errors(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[str]:
    errors = []
    env = celpy.Environment()
    for r in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in r["rule"] and old is None:
            continue  # transition rules apply to updates only
        activation = {"self": celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = env.program(env.compile(r["rule"]), functions=CEL_FUNCTIONS).evaluate(activation)
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path}{r.get('fieldPath', '')}: {r['message']}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                errors += _cel_errors(sub, value[name], (old or {}).get(name) if isinstance(old, dict) else None,
                                      f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, None, f"{path}[{i}]")
    return errors


def admission_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    crd = BY_KIND[obj["kind"]]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(obj)]
    if not errors:
        root_rules = {"x-kubernetes-validations": schema.get("x-kubernetes-validations") or []}
        errors += _cel_errors(root_rules, obj, old, "")
        errors += _cel_errors(schema["properties"]["spec"], obj["spec"], (old or {}).get("spec"), "spec")
    return errors


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_cover_the_issue():
    kinds = [d["kind"] for p in EXAMPLES for d in _docs(p)]
    assert {"EventBroker", "Topic", "Microservice", "CostReport"} <= set(kinds)
    topics = [d for p in EXAMPLES for d in _docs(p) if d["kind"] == "Topic"]
    assert any(t["spec"].get("cleanupPolicy") == "compact" for t in topics)
    assert any(t["spec"].get("retention") == "forever" for t in topics)
    assert len({t["spec"]["team"] for t in topics}) >= 2
    assert next(d for p in EXAMPLES for d in _docs(p) if d["kind"] == "EventBroker")["spec"]["tieredStorage"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    for doc in _docs(path):
        if doc["apiVersion"].startswith("strata.dev/"):
            assert admission_errors(doc) == [], doc["metadata"]["name"]
        else:
            import kubernetes_validate

            kubernetes_validate.validate(doc, "1.35", strict=True)


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_specs_are_rejected_with_a_useful_message(path):
    """One document: a create that must be refused. Two documents: an object as stored (accepted),
    then the update of it that must be refused (for transition rules, which compare with oldSelf)."""
    expect = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    *stored, doc = _docs(path)
    if stored:
        assert admission_errors(stored[0]) == [], f"{path.name}: the stored object is itself invalid"
    errors = admission_errors(doc, old=stored[0] if stored else None)
    assert errors, f"{path.name} was accepted"
    assert any(expect in e for e in errors), errors


def test_every_cel_rule_has_a_bad_example():
    """Each x-kubernetes-validations rule is broken by at least one object in tests/operator_invalid/
    (so a real API server can be checked against the same examples)."""
    unbroken = []
    for kind, crd in BY_KIND.items():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            for r in node.get("x-kubernetes-validations") or []:
                unbroken.append((kind, path, r["message"]))
    for path in sorted(INVALID.glob("*.yaml")):
        *stored, doc = _docs(path)
        errors = admission_errors(doc, old=stored[0] if stored else None)
        unbroken = [(k, p, m) for k, p, m in unbroken if not (k == doc["kind"] and any(m in e for e in errors))]
    assert not unbroken, "CEL rules without a bad example in tests/operator_invalid/:\n" + "\n".join(
        f"{k} {p}: {m}" for k, p, m in unbroken)


def _topic(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "t"},
            "spec": {"brokerRef": {"name": "b"}, "team": "a", **spec}}


def test_transition_rules():
    assert admission_errors(_topic(partitions=6), old=_topic(partitions=3)) == []
    assert any("never decreased" in e for e in admission_errors(_topic(partitions=2), old=_topic(partitions=3)))
    assert any("topicName is immutable" in e
               for e in admission_errors(_topic(topicName="x"), old=_topic(topicName="y")))
    # adding or removing topicName changes the Kafka topic too (unless it equals metadata.name)
    assert any("topicName is immutable" in e for e in admission_errors(_topic(topicName="x"), old=_topic()))
    assert any("topicName is immutable" in e for e in admission_errors(_topic(), old=_topic(topicName="x")))
    assert admission_errors(_topic(topicName="t"), old=_topic()) == []
    assert admission_errors(_topic(topicName="x", partitions=2), old=_topic(topicName="x")) == []
    moved = _topic()
    moved["spec"]["brokerRef"] = {"name": "other"}
    assert any("brokerRef is immutable" in e for e in admission_errors(moved, old=_topic()))


@pytest.mark.parametrize("retention, ok", [("7d", True), ("1h30m", True), ("500ms", True), ("forever", True),
                                           ("7 days", False), ("-1", False), ("", False), ("1y", False)])
def test_durations_parse_at_admission(retention, ok):
    assert (admission_errors(_topic(retention=retention)) == []) is ok


def test_no_topic_config_is_defaulted_into_a_spec():
    """The API server writes schema defaults into every stored spec, where they would read as the user's
    wish: adopting a compacted topic would flip it to delete. Only deletionPolicy (not a topic config)
    may have one."""
    spec = BY_KIND["Topic"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaulted = {name for name, sub in spec["properties"].items() if "default" in sub}
    assert defaulted <= {"deletionPolicy"}, defaulted


def test_status_declares_only_what_the_operator_fills():
    """hotBytes/coldBytes were declared but never written: a status field nobody fills reads as zero."""
    topic_status = BY_KIND["Topic"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert not {"hotBytes", "coldBytes"} & set(topic_status["properties"])


def _broker(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker", "metadata": {"name": "b"},
            "spec": {"image": "strata:1", **spec}}


def test_storage_may_grow_never_shrink():
    assert admission_errors(_broker(storage={"size": "20Gi"}), old=_broker(storage={"size": "10Gi"})) == []
    assert admission_errors(_broker(storage={"size": "1Ti"}), old=_broker(storage={"size": "1000Gi"})) == []
    assert any("cannot shrink" in e
               for e in admission_errors(_broker(storage={"size": "10G"}), old=_broker(storage={"size": "10Gi"})))


def test_tls_listeners_at_admission():
    sasl_ssl = {"name": "tls", "port": 9093, "tls": True, "authentication": "scram-sha-512"}
    mtls = {"name": "mtls", "port": 9094, "tls": True, "authentication": "tls"}
    assert admission_errors(_broker(tls={"secretName": "broker-tls"}, listeners=[sasl_ssl])) == []
    assert admission_errors(_broker(tls={"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}},
                                    listeners=[sasl_ssl, mtls], authorization={"type": "simple"})) == []
    # the operator logs in with SCRAM on the first listener: an mTLS first listener cannot carry ACLs
    assert any("scram-sha-512" in e for e in admission_errors(
        _broker(tls={"issuerRef": {"name": "ca"}}, listeners=[mtls], authorization={"type": "simple"})))

"""The CRDs: one source (strata_operator/crds.py), rendered to crds/ (and the chart's copy),
structural, and enforcing what admission can check. Examples validate; invalid specs kept in
tests/unit/operator_invalid/ are rejected with a message naming the problem.

OpenAPI validation uses `jsonschema` on each CRD's openAPIV3Schema, with unknown fields rejected
as `kubectl apply` does (strict field validation). CEL rules (x-kubernetes-validations) are
evaluated with cel-python (celpy), which covers the subset of CEL these rules use; the API server
also evaluates them at admission. The admission helper is tests/support/crd_admission.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_admission import BY_KIND, admission_errors, walk
from strata_operator import crds

ROOT = Path(__file__).resolve().parents[2]
INVALID = Path(__file__).parent / "operator_invalid"
STRIMZI_SHORT_NAMES = {"k", "kt", "ku", "kc", "kmm", "kmm2", "kb", "kctr", "kr", "knp", "kafka"}
ALLOWED_KEYS = {"type", "description", "properties", "required", "items", "additionalProperties", "enum", "default",
                "pattern", "minimum", "maximum", "minLength", "maxLength", "maxItems", "format", "anyOf",
                "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}


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


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_crd_is_structural_with_status_columns_and_short_names(kind):
    crd = BY_KIND[kind]
    assert crd["spec"]["group"] == "strata.dev"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
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
    assert any(node.get("x-kubernetes-validations") for _, node in walk(schema["properties"]["spec"]))


def test_short_names_are_distinct():
    names = [n for c in BY_KIND.values() for n in c["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))


# -- a small admission emulation: OpenAPI (strict) + CEL -------------------------------------




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
    """Each x-kubernetes-validations rule is broken by at least one object in tests/unit/operator_invalid/
    (so a real API server can be checked against the same examples)."""
    unbroken = []
    for kind, crd in BY_KIND.items():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in walk(schema):
            for r in node.get("x-kubernetes-validations") or []:
                unbroken.append((kind, path, r["message"]))
    for path in sorted(INVALID.glob("*.yaml")):
        *stored, doc = _docs(path)
        errors = admission_errors(doc, old=stored[0] if stored else None)
        unbroken = [(k, p, m) for k, p, m in unbroken if not (k == doc["kind"] and any(m in e for e in errors))]
    assert not unbroken, "CEL rules without a bad example in tests/unit/operator_invalid/:\n" + "\n".join(
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

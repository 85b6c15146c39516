"""What the API server checks at admission, in process: a strata.dev object against its CRD's
openAPIV3Schema with strict field validation (`jsonschema`, unknown fields rejected as `kubectl apply`
does) and then the CRD's CEL rules (x-kubernetes-validations, evaluated with cel-python, which covers
the subset of CEL these rules use). Used by the CRD, chart and operator tests."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from typing import Any

import celpy
import jsonschema
from strata_operator import crds

BY_KIND = {c["spec"]["names"]["kind"]: c for c in crds.all_crds().values()}


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.field`, `[]` for items, `{}` for additionalProperties)."""
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}{{}}")
    return out



def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as kubectl's strict field validation sees it: unknown fields are errors."""
    schema = copy.deepcopy(schema)
    for _, node in walk(schema):
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
    """The errors admission gives for `obj` (an update from `old` when given); empty when accepted."""
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

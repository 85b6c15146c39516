"""The price model: a YAML file, validated strictly, over the packaged defaults.

`default-prices.yaml` (package data) holds public list prices, each with its source. A user
file overrides any subset of keys; an unknown key, a negative or non-numeric price, or an
unknown policy is an error naming the key, never a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import BillingError

DEFAULT_FILE = "default-prices.yaml"
POLICIES = ("proportional", "even", "weighted")
PRICE_KEYS = ("s3_storage_gib_month", "s3_put_per_1000", "s3_list_per_1000", "s3_get_per_1000",
              "s3_delete_per_1000", "s3_transfer_gib", "disk_gib_month", "vcpu_hour", "ram_gib_hour",
              "ingress_gib", "egress_gib", "connection_hour")
PLATFORM_KEYS = ("operator_cpu", "operator_memory_gib", "broker_cpu", "broker_memory_gib")
BILLING_KEYS = ("account_id", "account_name", "invoice_issuer", "provider", "publisher")
TOP_KEYS = ("currency", "hours_per_month", "prices", "platform", "fixed_monthly", "tax", "billing")
TAX_KEYS = ("policy", "weights", "share_idle")


@dataclass(frozen=True)
class PriceModel:
    currency: str
    hours_per_month: Decimal
    prices: dict[str, Decimal]
    platform: dict[str, Decimal]
    fixed_monthly: dict[str, Decimal]
    policy: str
    weights: dict[str, Decimal] = field(default_factory=dict)
    share_idle: bool = False
    billing: dict[str, str] = field(default_factory=dict)
    source: str = DEFAULT_FILE

    def price(self, key: str) -> Decimal:
        return self.prices[key]


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise BillingError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, float):
        value = repr(value)  # YAML 0.023 -> "0.023", not the binary float's expansion
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise BillingError(f"{where}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise BillingError(f"{where}: expected a finite number, got {value!r}")
    if number < 0:
        raise BillingError(f"{where}: must not be negative, got {value!r}")
    return number


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BillingError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise BillingError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(allowed)})")


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise BillingError(f"price file {source}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BillingError(f"price file {source}: the top level must be a mapping")
    return data


def default_text() -> str:
    return resources.files(__package__).joinpath(DEFAULT_FILE).read_text(encoding="utf-8")


def _merge(base: dict[str, Any], override: dict[str, Any], source: str) -> dict[str, Any]:
    _check_keys(override, TOP_KEYS, f"price file {source}")
    merged = dict(base)
    for key, value in override.items():
        if key in ("prices", "platform", "tax", "billing") and isinstance(value, dict):
            merged[key] = {**_mapping(base.get(key), key), **value}
        else:
            merged[key] = value  # fixed_monthly replaces: your lines are your lines
    return merged


def parse(data: dict[str, Any], source: str) -> PriceModel:
    where = f"price file {source}"
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not currency.isalpha() or len(currency) != 3:
        raise BillingError(f"{where}: currency must be an ISO 4217 code such as USD, got {currency!r}")
    hours = _number(data.get("hours_per_month", 730), f"{where}: hours_per_month")
    if hours == 0:
        raise BillingError(f"{where}: hours_per_month must be positive")
    prices_in = _mapping(data.get("prices"), f"{where}: prices")
    _check_keys(prices_in, PRICE_KEYS, f"{where}: prices")
    prices = {k: _number(prices_in.get(k, 0), f"{where}: prices.{k}") for k in PRICE_KEYS}
    platform_in = _mapping(data.get("platform"), f"{where}: platform")
    _check_keys(platform_in, PLATFORM_KEYS, f"{where}: platform")
    platform = {k: _number(platform_in.get(k, 0), f"{where}: platform.{k}") for k in PLATFORM_KEYS}
    fixed_in = _mapping(data.get("fixed_monthly"), f"{where}: fixed_monthly")
    fixed = {str(k): _number(v, f"{where}: fixed_monthly.{k}") for k, v in fixed_in.items()}
    tax = _mapping(data.get("tax"), f"{where}: tax")
    _check_keys(tax, TAX_KEYS, f"{where}: tax")
    policy = tax.get("policy", "proportional")
    if policy not in POLICIES:
        raise BillingError(f"{where}: tax.policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    weights_in = _mapping(tax.get("weights"), f"{where}: tax.weights")
    weights = {str(k): _number(v, f"{where}: tax.weights.{k}") for k, v in weights_in.items()}
    share_idle = tax.get("share_idle", False)
    if not isinstance(share_idle, bool):
        raise BillingError(f"{where}: tax.share_idle must be true or false, got {share_idle!r}")
    billing_in = _mapping(data.get("billing"), f"{where}: billing")
    _check_keys(billing_in, BILLING_KEYS, f"{where}: billing")
    billing = {k: str(billing_in.get(k) or "") for k in BILLING_KEYS}
    return PriceModel(currency=currency.upper(), hours_per_month=hours, prices=prices, platform=platform,
                      fixed_monthly=fixed, policy=policy, weights=weights, share_idle=share_idle,
                      billing=billing, source=source)


# CostReport CR `spec.prices` (camelCase, GB = GiB) -> price-file keys.
COSTREPORT_PRICES = {"s3GbMonth": ("s3_storage_gib_month",), "s3PutPer1000": ("s3_put_per_1000", "s3_list_per_1000"),
                     "s3GetPer1000": ("s3_get_per_1000",), "diskGbMonth": ("disk_gib_month",),
                     "cpuHour": ("vcpu_hour",), "ramGbHour": ("ram_gib_hour",),
                     "networkGb": ("ingress_gib", "egress_gib")}


def from_costreport_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A CostReport's spec as a price-file override (for `load(overrides=...)`)."""
    out: dict[str, Any] = {}
    if spec.get("currency"):
        out["currency"] = spec["currency"]
    given = _mapping(spec.get("prices"), "CostReport spec.prices")
    _check_keys(given, tuple(COSTREPORT_PRICES), "CostReport spec.prices")
    if given:
        out["prices"] = {key: value for field_, keys in COSTREPORT_PRICES.items() if field_ in given
                         for key in keys for value in [given[field_]]}
    tax: dict[str, Any] = {}
    if spec.get("sharedCostPolicy"):
        tax["policy"] = spec["sharedCostPolicy"]
    if spec.get("weights"):
        tax["weights"] = spec["weights"]
    if tax:
        out["tax"] = tax
    return out


def load(path: str | Path | None = None, *, policy: str | None = None,
         overrides: dict[str, Any] | None = None) -> PriceModel:
    """The packaged defaults, overridden by `path`, then `overrides` (e.g. `from_costreport_spec`),
    then `policy`, each if given."""
    base = _load_yaml(default_text(), DEFAULT_FILE)
    source = DEFAULT_FILE
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BillingError(f"cannot read price file {path}: {exc}") from None
        source = str(path)
        base = _merge(base, _load_yaml(text, source), source)
    if overrides:
        base = _merge(base, overrides, "overrides")
    if policy is not None:
        base = {**base, "tax": {**_mapping(base.get("tax"), "tax"), "policy": policy}}
    return parse(base, source)

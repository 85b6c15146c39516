"""Authentication (SASL PLAIN/SCRAM, TLS), authorization (Kafka ACLs) and client quotas."""

from strata_contract.principals import ANONYMOUS

__all__ = ["ANONYMOUS"]

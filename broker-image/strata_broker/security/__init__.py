"""Authentication (SASL PLAIN/SCRAM, TLS), authorization (Kafka ACLs) and client quotas."""

ANONYMOUS = "User:ANONYMOUS"

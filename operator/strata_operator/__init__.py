"""Strata operator: the control plane (kopf). Reaches brokers only over the Kafka protocol.

crds (schemas, rendered to crds/), resources (pure builders), logic (pure decisions), admin (Kafka
admin API), kube (Kubernetes API), handlers (kopf), operator_cli (`strata operator`).
"""

"""Strata operator: the control plane (kopf). Reaches brokers only over the Kafka protocol.

Not built yet: the operator is its own issue. This package exists so the distribution's
layout (two import packages) is fixed from the start.
"""

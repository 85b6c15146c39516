"""Strata's schema registry: the Confluent Schema Registry REST API, stored in the `_schemas` topic.

A separate process (`strata-registry`) beside the broker; the broker never imports this package.
"""

"""The two-team Topic and Microservice manifests the topology tests (CLI, live workload, chart) share."""

MANIFESTS = """\
apiVersion: strata.dev/v1alpha1
kind: Topic
metadata: {name: orders, namespace: shop}
spec: {team: shop, partitions: 1}
---
apiVersion: strata.dev/v1alpha1
kind: Topic
metadata: {name: invoices, namespace: finance}
spec: {team: finance, partitions: 1, schema: {type: AVRO, schema: '"string"'}}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: checkout, namespace: shop}
spec: {team: shop, image: x, produces: [orders]}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: fulfilment, namespace: shop}
spec: {team: shop, image: x, consumes: [orders], consumerGroup: shop.fulfil}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: billing, namespace: finance}
spec: {team: finance, image: x, consumes: [orders], produces: [invoices]}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: ledger, namespace: finance}
spec: {team: finance, image: x, consumes: [invoices]}
"""

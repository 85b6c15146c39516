"""kopf handlers, one module per kind: thin glue between Kubernetes events and the pure logic in
`logic`/`resources`.

Create, update and resume of each kind share one idempotent reconcile function. Drift is found by
one periodic resync per EventBroker (`resync.py`), which runs the same functions for the Topics and
Microservices that differ from the broker's snapshot; there is no timer per Topic or Microservice.
Errors become conditions and Events and are retried with backoff (kopf.TemporaryError, or the
broker's resync for a broker that cannot be reached), never a crash loop. Settings: `settings.py`
(environment variables, read once at start).
Importing this package registers every handler with kopf.
"""

from . import common, costreport, eventbroker, microservice, resync, topic

__all__ = ["common", "costreport", "eventbroker", "microservice", "resync", "topic"]

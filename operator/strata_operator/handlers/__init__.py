"""kopf handlers, one module per kind: thin glue between Kubernetes events and the pure logic in
`logic`/`resources`.

Create, update, resume and the periodic timer of each kind share one idempotent reconcile
function. Errors become conditions and Events and are retried with backoff (kopf.TemporaryError),
never a crash loop. Settings: `settings.py` (environment variables, read once at start).
Importing this package registers every handler with kopf.
"""

from . import common, costreport, eventbroker, microservice, topic

__all__ = ["common", "costreport", "eventbroker", "microservice", "topic"]

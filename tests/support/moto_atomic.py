"""moto's S3 server with conditional writes made atomic, as S3's are.

moto checks a PUT's If-Match / If-None-Match and then writes, in a threaded server: two writers
racing on one key can both pass the check (the producer id counter's concurrent reservations were
seen handing out one block twice). A lock around every conditional PUT makes check and write one
step; other requests stay concurrent. Run as `python tests/support/moto_atomic.py -H HOST -p PORT`, like
`python -m moto.server`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto.server as server

_conditional_writes = threading.Lock()
_dispatch = server.DomainDispatcherApplication.__call__


def _call(self: Any, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD") == "PUT" and ("HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ):
        with _conditional_writes:
            return _dispatch(self, environ, start_response)
    return _dispatch(self, environ, start_response)


server.DomainDispatcherApplication.__call__ = _call  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()

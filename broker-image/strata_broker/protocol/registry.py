"""The table of APIs the broker implements: key, codec classes, version range, handler.

Only versions that a handler really implements are advertised in ApiVersions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import RequestContext

Handler = Callable[["RequestContext", Any], Awaitable[Any]]


@dataclass(frozen=True)
class ApiSpec:
    key: int
    name: str
    request: Any  # a kafka.protocol ApiMessage class
    response: Any
    min_version: int
    max_version: int
    handler: Handler


API_TABLE: dict[int, ApiSpec] = {}


def api(request: Any, response: Any, min_version: int, max_version: int) -> Callable[[Handler], Handler]:
    if max_version > request.max_version or max_version > response.max_version:
        raise ValueError(f"{request.name}: kafka-python has no codec for v{max_version}")

    def register(handler: Handler) -> Handler:
        key = request.API_KEY
        if key in API_TABLE:
            raise ValueError(f"two handlers for API key {key}")
        API_TABLE[key] = ApiSpec(key, request.name.removesuffix("Request"), request, response, min_version,
                                 max_version, handler)
        return handler

    return register

"""Building an S3 client: the one place the broker, the operator and the `strata` tools set one up.

`S3Settings` says where (endpoint, region), as whom (explicit keys, else the standard AWS chain:
environment, config files, web identity / IRSA) and how patiently (timeouts, retries, pool
size). `async_client(settings)` gives an aiobotocore client (an async context manager, as
aiobotocore's `create_client` does); `sync_client(settings)` a plain botocore client, which has
the same operations, paginators and modelled exceptions as a boto3 one. Both import botocore
only when called: the broker image installs aiobotocore (and so botocore) but not boto3, and this
package is imported by every plane.

`error_code(exc)` reads the S3 error code of a failed call, whichever of the two raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REGION = "us-east-1"
CREDENTIAL_ARGS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
NOT_FOUND = ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class S3Settings:
    """How to reach a bucket's S3 endpoint.

    `credentials`: client arguments among CREDENTIAL_ARGS (empty: the standard AWS chain).
    `region`: None takes the configured one (AWS_REGION, ~/.aws/config), else us-east-1.
    `unsigned_if_anonymous`: send requests unsigned when the chain finds no credentials at all
    (public buckets, a laptop's moto); the sync client only.
    `max_attempts`: botocore's own attempts per call (1: the caller retries itself)."""

    endpoint: str | None = None
    region: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    retry_mode: str = "standard"
    max_pool_connections: int = 10
    unsigned_if_anonymous: bool = False

    def client_args(self, session: Any) -> dict[str, Any]:
        """create_client's arguments but `config`, for a botocore or aiobotocore session."""
        unknown = set(self.credentials) - set(CREDENTIAL_ARGS)
        if unknown:
            raise ValueError(f"unknown S3 credential argument(s): {', '.join(sorted(unknown))}")
        return {"endpoint_url": self.endpoint or None,
                "region_name": self.region or session.get_config_variable("region") or DEFAULT_REGION,
                **{k: v for k, v in self.credentials.items() if v}}

    def config_args(self) -> dict[str, Any]:
        """botocore Config / aiobotocore AioConfig arguments."""
        return {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                "retries": {"max_attempts": self.max_attempts, "mode": self.retry_mode},
                "max_pool_connections": self.max_pool_connections}


def async_client(settings: S3Settings) -> Any:
    """An aiobotocore S3 client; use it as `async with async_client(s) as client:` (or enter it
    on an AsyncExitStack). It belongs to the event loop that enters it."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    return session.create_client("s3", config=AioConfig(**settings.config_args()), **settings.client_args(session))


def sync_client(settings: S3Settings) -> Any:
    """A botocore S3 client (blocking calls; `client.exceptions.NoSuchKey` and paginators as boto3's)."""
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.session import get_session

    session = get_session()
    config = Config(**settings.config_args())
    if settings.unsigned_if_anonymous and not settings.credentials and session.get_credentials() is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.create_client("s3", config=config, **settings.client_args(session))


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for network errors and the like)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    """The call failed because the key (or bucket object) does not exist."""
    return error_code(exc) in NOT_FOUND

"""`strata-registry`: the schema registry's process (REST API over `_schemas` on a Strata broker)."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from aiohttp import web

from .app import build_app
from .auth import BasicAuth, SubjectAuthorizer
from .service import Registry, Settings

log = logging.getLogger("strata_registry")


async def serve(settings: Settings, host: str, port: int, max_body: int, auth: BasicAuth | None = None,
                authz: SubjectAuthorizer | None = None) -> None:
    registry = Registry(settings)
    await registry.start()
    runner = web.AppRunner(build_app(registry, max_body, auth, authz), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("strata-registry %s serving on http://%s:%d (advertised %s)", registry.instance[:8], host, port,
             settings.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    await registry.close()


@click.command()
@click.option("--bootstrap", default="127.0.0.1:9092", show_default=True, help="the Strata broker")
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="HOST:PORT of the REST API")
@click.option("--advertised-url", default="", help="URL other instances forward writes to "
              "(default http://LISTEN)")
@click.option("--group", "group_id", default="strata-schema-registry", show_default=True,
              help="consumer group the instances elect their leader in")
@click.option("--kafka", "kafka_config", multiple=True, metavar="KEY=VALUE",
              help="librdkafka setting for the connection to the broker (security.protocol, sasl.*, ssl.*)")
@click.option("--max-schema-bytes", default=1024 * 1024, show_default=True, type=int,
              help="a larger schema is refused (42209)")
@click.option("--auth-bootstrap", default="", metavar="HOST:PORT",
              help="Require HTTP basic auth, checked by logging in to this SASL listener of the broker "
              "(the broker's users are the registry's users)")
@click.option("--auth-mechanism", default="SCRAM-SHA-512", show_default=True,
              type=click.Choice(["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]))
@click.option("--auth-kafka", "auth_config", multiple=True, metavar="KEY=VALUE",
              help="librdkafka setting for those logins (security.protocol=SASL_SSL, ssl.ca.location, ...)")
@click.option("--authorize", is_flag=True, help="With --auth-bootstrap: subjects need the broker's ACLs on their "
              "topic (Read to read <topic>-value/-key, Write to register); the registry's own principal needs "
              "Describe on the cluster to read them")
@click.option("--super-users", default="", metavar="User:a;User:b",
              help="With --authorize: principals allowed everything (the broker's super.users)")
@click.option("--log-level", default="INFO", show_default=True)
def main(bootstrap: str, listen: str, advertised_url: str, group_id: str, kafka_config: tuple[str, ...],
         max_schema_bytes: int, auth_bootstrap: str, auth_mechanism: str, auth_config: tuple[str, ...],
         authorize: bool, super_users: str, log_level: str) -> None:
    """Serve the Confluent Schema Registry API, storing everything in the broker's `_schemas` topic."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = listen.rpartition(":")
    client = _pairs(kafka_config, "--kafka")
    auth = BasicAuth(auth_bootstrap, auth_mechanism, _pairs(auth_config, "--auth-kafka")) if auth_bootstrap else None
    if authorize and auth is None:
        raise click.UsageError("--authorize needs --auth-bootstrap (who asks must be known)")
    authz = SubjectAuthorizer(bootstrap, client, super_users) if authorize else None
    settings = Settings(bootstrap=bootstrap, url=advertised_url or f"http://{host or '127.0.0.1'}:{port}",
                        group_id=group_id, client_config=client, max_schema_bytes=max_schema_bytes)
    asyncio.run(serve(settings, host or "127.0.0.1", int(port), max_schema_bytes + 64 * 1024, auth, authz))


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        out[key] = value
    return out


if __name__ == "__main__":
    main()

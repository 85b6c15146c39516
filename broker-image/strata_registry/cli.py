"""`strata-registry`: the schema registry's process (REST API over `_schemas` on a Strata broker)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl

import click
from aiohttp import web

from .app import build_app
from .auth import BasicAuth, SubjectAuthorizer
from .service import Registry, Settings

log = logging.getLogger("strata_registry")


class ServerTls:
    """The REST listener's certificate (`--tls-cert`, `--tls-key`): one SSL context, whose certificate is
    loaded again when either file changes (cert-manager renews it in place), checked every `every` s;
    new connections get the new certificate."""

    def __init__(self, certfile: str, keyfile: str, every: float = 30.0) -> None:
        self.certfile, self.keyfile, self.every = certfile, keyfile, every
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._mtimes()
        self.context.load_cert_chain(certfile, keyfile)

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.certfile).st_mtime, os.stat(self.keyfile).st_mtime

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:  # half-written during a renewal: the next look gets it
            log.warning("TLS certificate not reloaded: %s", exc)
            return False
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.reload_if_changed()


def forward_context(cafile: str) -> ssl.SSLContext:
    """How a follower verifies the leader it forwards writes to: signed by `cafile`. The name is not
    checked, since instances advertise their pod IPs, which their common certificate does not name."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = False
    return context


async def serve(settings: Settings, host: str, port: int, max_body: int, auth: BasicAuth | None = None,
                authz: SubjectAuthorizer | None = None, tls: ServerTls | None = None,
                forward_ssl: ssl.SSLContext | None = None) -> None:
    registry = Registry(settings)
    await registry.start()
    runner = web.AppRunner(build_app(registry, max_body, auth, authz, forward_ssl), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls.context if tls else None)
    await site.start()
    log.info("strata-registry %s serving on %s://%s:%d (advertised %s)", registry.instance[:8],
             "https" if tls else "http", host, port, settings.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(tls.watch()) if tls else None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    if watcher is not None:
        watcher.cancel()
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
@click.option("--kafka-password", default="", envvar="STRATA_REGISTRY_KAFKA_PASSWORD", show_envvar=True,
              help="sasl.password of the connection to the broker (kept off the command line)")
@click.option("--tls-cert", default="", metavar="FILE", help="Serve HTTPS with this certificate (PEM; reloaded "
              "when it changes)")
@click.option("--tls-key", default="", metavar="FILE", help="The key of --tls-cert (PEM)")
@click.option("--tls-ca", default="", metavar="FILE", help="CA that signed the other instances' certificates: "
              "forwarded writes to https:// instances are verified against it (not by name)")
@click.option("--log-level", default="INFO", show_default=True)
def main(bootstrap: str, listen: str, advertised_url: str, group_id: str, kafka_config: tuple[str, ...],
         max_schema_bytes: int, auth_bootstrap: str, auth_mechanism: str, auth_config: tuple[str, ...],
         authorize: bool, super_users: str, kafka_password: str, tls_cert: str, tls_key: str, tls_ca: str,
         log_level: str) -> None:
    """Serve the Confluent Schema Registry API, storing everything in the broker's `_schemas` topic."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = listen.rpartition(":")
    client = _pairs(kafka_config, "--kafka")
    if kafka_password:
        client["sasl.password"] = kafka_password
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = ServerTls(tls_cert, tls_key) if tls_cert else None
    auth = BasicAuth(auth_bootstrap, auth_mechanism, _pairs(auth_config, "--auth-kafka")) if auth_bootstrap else None
    if authorize and auth is None:
        raise click.UsageError("--authorize needs --auth-bootstrap (who asks must be known)")
    authz = SubjectAuthorizer(bootstrap, client, super_users) if authorize else None
    scheme = "https" if tls else "http"
    settings = Settings(bootstrap=bootstrap, url=advertised_url or f"{scheme}://{host or '127.0.0.1'}:{port}",
                        group_id=group_id, client_config=client, max_schema_bytes=max_schema_bytes)
    asyncio.run(serve(settings, host or "127.0.0.1", int(port), max_schema_bytes + 64 * 1024, auth, authz, tls,
                      forward_context(tls_ca) if tls_ca else None))


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

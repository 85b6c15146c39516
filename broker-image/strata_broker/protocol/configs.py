"""DescribeConfigs (topics and the broker), IncrementalAlterConfigs and the legacy AlterConfigs (topics).

Sources as Kafka reports them: a topic's own setting is TOPIC_CONFIG, a default the operator set on the
broker (`--set`, the environment) STATIC_BROKER_CONFIG, anything left alone DEFAULT_CONFIG. Topic
defaults are described on the broker under Kafka's broker property names (log.retention.ms, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka.protocol.admin import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
)

from ..config import (
    BROKER_ALIASES,
    BROKER_CONFIGS,
    BROKER_NAME_OF_TOPIC_CONFIG,
    SENSITIVE_CONFIGS,
    TOPIC_CONFIGS,
    BrokerConfig,
    ConfigError,
    parse_topic_config,
)
from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import refuse_internal
from ..security.acl import CLUSTER_NAME, OP_ALTER_CONFIGS, OP_DESCRIBE_CONFIGS, RES_CLUSTER, RES_TOPIC
from .context import RequestContext
from .registry import api

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4

# DescribeConfigs config sources (Kafka's ConfigSource).
CONFIG_SOURCE_TOPIC = 1
CONFIG_SOURCE_STATIC_BROKER = 4
CONFIG_SOURCE_DEFAULT = 5

# Kafka's ConfigType for DescribeConfigs v3+.
_TYPE_BOOLEAN, _TYPE_STRING, _TYPE_LONG, _TYPE_LIST = 1, 2, 5, 7

OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3


def _config_type(name: str, value: object) -> int:
    if name in ("cleanup.policy", "log.cleanup.policy"):
        return _TYPE_LIST
    if isinstance(value, bool):
        return _TYPE_BOOLEAN
    if isinstance(value, int):
        return _TYPE_LONG
    return _TYPE_STRING


def describe_topic_values(config: BrokerConfig, overrides: dict[str, str]) -> list[tuple[str, str, int]]:
    """(name, effective value, config source) for every topic config."""
    out = []
    for name in TOPIC_CONFIGS:
        if name in overrides:
            out.append((name, overrides[name], CONFIG_SOURCE_TOPIC))
        else:
            source = CONFIG_SOURCE_STATIC_BROKER if name in config.explicit else CONFIG_SOURCE_DEFAULT
            out.append((name, config.topic_defaults[name], source))
    return out


def _default_of(config: BrokerConfig, name: str) -> str:
    """The value a config has when nobody sets it (remote.storage.enable follows the bucket)."""
    if name == "remote.storage.enable":
        return "true" if config["tiered.s3.bucket"] else "false"
    key = TOPIC_CONFIGS.get(name) or BROKER_CONFIGS[name]
    return key.default


def _broker_synonyms(config: BrokerConfig, name: str, value: str) -> list[tuple[str, str, int]]:
    """A broker property's synonyms, as Kafka lists them: the operator's setting, then the default."""
    topic_name = name if name in TOPIC_CONFIGS else None
    for topic_config, broker_name in BROKER_NAME_OF_TOPIC_CONFIG.items():
        if broker_name == name:
            topic_name = topic_config
    out = []
    if (topic_name or name) in config.explicit:
        out.append((name, value, CONFIG_SOURCE_STATIC_BROKER))
    out.append((name, _default_of(config, topic_name or name), CONFIG_SOURCE_DEFAULT))
    return out


def _topic_synonyms(config: BrokerConfig, name: str, overrides: dict[str, str]) -> list[tuple[str, str, int]]:
    """A topic config's synonyms: the topic's own value, then the broker default it falls back to."""
    out = []
    if name in overrides:
        out.append((name, overrides[name], CONFIG_SOURCE_TOPIC))
    broker_name = BROKER_NAME_OF_TOPIC_CONFIG.get(name, name)
    return out + _broker_synonyms(config, broker_name, config.topic_defaults[name])


def _authorize_config(ctx: RequestContext, resource_type: int, name: str, operation: int) -> None:
    if resource_type == RESOURCE_TOPIC and not ctx.authorize(operation, RES_TOPIC, name):
        raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not do that on {name}")
    if resource_type == RESOURCE_BROKER and not ctx.authorize(operation, RES_CLUSTER, CLUSTER_NAME):
        raise KafkaProtocolError(ErrorCode.CLUSTER_AUTHORIZATION_FAILED, f"{ctx.principal} may not do that")


@api(DescribeConfigsRequest, DescribeConfigsResponse, 1, 4)
async def handle_describe_configs(ctx: RequestContext, request: DescribeConfigsRequest) -> DescribeConfigsResponse:
    R = DescribeConfigsResponse
    Entry = R.DescribeConfigsResult.DescribeConfigsResourceResult
    Synonym = Entry.DescribeConfigsSynonym
    broker = ctx.services
    results = []
    for resource in request.resources:
        result = R.DescribeConfigsResult(error_code=0, error_message=None, resource_type=resource.resource_type,
                                         resource_name=resource.resource_name, configs=[])
        keys = set(resource.configuration_keys) if resource.configuration_keys is not None else None
        try:
            # name, value, source, read_only, synonyms
            entries: list[tuple[str, str, int, bool, list[tuple[str, str, int]]]] = []
            _authorize_config(ctx, resource.resource_type, resource.resource_name, OP_DESCRIBE_CONFIGS)
            config = broker.config
            if resource.resource_type == RESOURCE_TOPIC:
                topic = broker.logs.get_topic(resource.resource_name)
                for name, value, source in describe_topic_values(config, topic.overrides):
                    entries.append((name, value, source, False, _topic_synonyms(config, name, topic.overrides)))
            elif resource.resource_type == RESOURCE_BROKER:
                if resource.resource_name not in ("", str(broker.node_id)):
                    raise KafkaProtocolError(ErrorCode.RESOURCE_NOT_FOUND, f"no broker {resource.resource_name}")
                for name, value in config.props.items():
                    if name in SENSITIVE_CONFIGS:
                        continue  # (a password) never shown
                    text = str(value).lower() if isinstance(value, bool) else str(value)
                    synonyms = _broker_synonyms(config, name, text)
                    entries.append((name, text, synonyms[0][2], True, synonyms))
                for name, value in config.topic_defaults.items():
                    broker_name = BROKER_NAME_OF_TOPIC_CONFIG.get(name, name)
                    synonyms = _broker_synonyms(config, broker_name, value)
                    entries.append((broker_name, value, synonyms[0][2], True, synonyms))
            else:
                raise KafkaProtocolError(ErrorCode.INVALID_REQUEST,
                                         f"resource type {resource.resource_type} is not described here")
            for name, value, source, read_only, synonyms in entries:
                if keys is not None and name not in keys:
                    continue
                known = (TOPIC_CONFIGS.get(name) or BROKER_CONFIGS.get(name)
                         or TOPIC_CONFIGS.get(BROKER_ALIASES.get(name, "")))
                parsed = known.parse(value) if known else value
                result.configs.append(Entry(
                    name=name, value=value, read_only=read_only, config_source=source,
                    is_default=source == CONFIG_SOURCE_DEFAULT, is_sensitive=False,
                    synonyms=[Synonym(name=n, value=v, source=src) for n, v, src in synonyms]
                    if request.include_synonyms else [],
                    config_type=_config_type(name, parsed),
                    documentation=known.doc if (known and request.include_documentation) else None,
                ))
        except KafkaProtocolError as exc:
            result.error_code = int(exc.code)
            result.error_message = exc.message
        results.append(result)
    return R(version=ctx.api_version, throttle_time_ms=0, results=results)


def _apply_ops(current: dict[str, str], ops: list, defaults: dict[str, str]) -> dict[str, str]:
    updated = dict(current)
    for op in ops:
        if op.name not in TOPIC_CONFIGS:
            raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, f"unknown topic config {op.name!r}")
        if op.config_operation == OP_SET:
            if op.value is None:
                raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, f"{op.name}: SET needs a value")
            updated[op.name] = op.value
        elif op.config_operation == OP_DELETE:
            updated.pop(op.name, None)
        elif op.config_operation in (OP_APPEND, OP_SUBTRACT):
            if op.name != "cleanup.policy":
                raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, f"{op.name} is not a list")
            items = [v for v in updated.get(op.name, defaults[op.name]).split(",") if v]
            change = [v for v in (op.value or "").split(",") if v]
            if op.config_operation == OP_APPEND:
                items += [v for v in change if v not in items]
            else:
                items = [v for v in items if v not in change]
            updated[op.name] = ",".join(items)
        else:
            raise KafkaProtocolError(ErrorCode.INVALID_REQUEST, f"unknown config operation {op.config_operation}")
        if op.name in updated:
            try:
                parse_topic_config(op.name, updated[op.name])
            except ConfigError as exc:
                raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
    return updated


async def _alter_topic_configs(ctx: RequestContext, request: Any, response_class: Any,
                               new_overrides: Callable[[Any, dict[str, str]], dict[str, str]]) -> Any:
    """AlterConfigs, incremental or not: per resource, authorize, refuse broker and internal resources,
    then set the topic's overrides to `new_overrides(resource, current)` (or only check them)."""
    R = response_class
    services = ctx.services
    results = []
    for resource in request.resources:
        result = R.AlterConfigsResourceResponse(error_code=0, error_message=None,
                                                resource_type=resource.resource_type,
                                                resource_name=resource.resource_name)
        try:
            _authorize_config(ctx, resource.resource_type, resource.resource_name, OP_ALTER_CONFIGS)
            if resource.resource_type != RESOURCE_TOPIC:
                raise KafkaProtocolError(ErrorCode.INVALID_REQUEST,
                                         "broker properties are static: restart the broker with --set")
            refuse_internal(resource.resource_name, "reconfigured")
            topic = services.logs.get_topic(resource.resource_name)
            updated = new_overrides(resource, topic.overrides)
            services.logs.alter_topic_config(topic.name, updated, validate_only=request.validate_only)
            await services.leadership.published(topic.name)
        except KafkaProtocolError as exc:
            result.error_code = int(exc.code)
            result.error_message = exc.message
        results.append(result)
    return R(version=ctx.api_version, throttle_time_ms=0, responses=results)


@api(IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0, 1)
async def handle_incremental_alter_configs(
    ctx: RequestContext, request: IncrementalAlterConfigsRequest
) -> IncrementalAlterConfigsResponse:
    defaults = ctx.services.config.topic_defaults
    return await _alter_topic_configs(ctx, request, IncrementalAlterConfigsResponse,
                                      lambda resource, current: _apply_ops(current, resource.configs, defaults))


def _replace_configs(resource: Any, current: dict[str, str]) -> dict[str, str]:
    """Legacy AlterConfigs: the overrides become exactly the configs sent."""
    updated: dict[str, str] = {}
    for entry in resource.configs:
        if entry.value is None:
            raise KafkaProtocolError(ErrorCode.INVALID_REQUEST, f"{entry.name}: null value")
        try:
            parse_topic_config(entry.name, entry.value)
        except ConfigError as exc:
            raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        updated[entry.name] = entry.value
    return updated


@api(AlterConfigsRequest, AlterConfigsResponse, 0, 2)
async def handle_alter_configs(ctx: RequestContext, request: AlterConfigsRequest) -> AlterConfigsResponse:
    """The legacy (non-incremental) AlterConfigs: a topic's overrides become exactly the configs sent;
    every config not named goes back to its default, as in Kafka."""
    return await _alter_topic_configs(ctx, request, AlterConfigsResponse, _replace_configs)

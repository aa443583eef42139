"""Kafka client settings: where the bootstrap address comes from, and secret redaction.

Settings resolve in layers (explicit argument, then environment, then default), and
are read when a client is built, never at import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamguard.errors import ConfigurationError

if TYPE_CHECKING:  # the CLI's; a service never loads argparse
    import argparse

BOOTSTRAP_ENV = "STREAMGUARD_BOOTSTRAP_SERVERS"
REDACTED = "***"

# librdkafka properties that hold secrets; any key containing one of these words is
# treated as a secret too, so a new SASL mechanism's password is never printed.
# ``user.info`` is the schema registry client's ``basic.auth.user.info`` (user:password).
# ``oauthbearer.config`` is free-form (``principal=... clientSecret=...``, a token):
# librdkafka itself marks it sensitive and redacts it from its own config dumps.
_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "credential",
    "private",
    "key.pem",
    "jaas",
    "user.info",
    "oauthbearer.config",
)


def is_secret(key: str) -> bool:
    """True for config keys whose values must never be logged or shown."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` that is safe to log: secret values replaced by ``***``, and
    values other than text, numbers and booleans shown by their type alone.

    The repr of such a value can hold anything: an ``oauth_cb`` written as
    ``functools.partial(get_token, args)`` (as confluent-kafka's OAuth example does)
    shows the client secret bound in ``args``, and a registry's
    ``bearer.auth.custom.provider.config`` is a dict of the provider's credentials.
    """
    return {k: (REDACTED if is_secret(k) else _plain(v)) for k, v in config.items()}


def refused_setting_text(text: str) -> str:
    """librdkafka's refusal of a setting without the value it quotes
    (``Invalid value "..." for configuration property "security.protocol"``): the value
    may be a secret, read with ``--kafka-config-env`` from a variable given to the
    wrong key. The property's name says what to fix."""
    text = _QUOTED_VALUE.sub("Invalid value for configuration property", text)
    return _TRAILING_VALUE.sub(r"\1", text)


_QUOTED_VALUE = re.compile(r'Invalid value ".*?" for configuration property', re.DOTALL)
# The forms that put the value last, after a colon: a string property checked against
# its list (``partitioner``), and the client's own checks when it is built
# (``Failed to create consumer: Unsupported SASL mechanism: ...``).
_TRAILING_VALUE = re.compile(
    r'(Invalid value for configuration property "[^"]*"'
    r"|Unsupported SASL mechanism|Unsupported partition\.assignment\.strategy): .*",
    re.DOTALL,
)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    return f"<{type(value).__name__}>"


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***`` (a
    ``TOKEN@`` part, which has no password, by ``***`` whole).

    Registry URLs may carry basic-auth credentials; every URL shown or logged goes
    through here. Several comma-separated URLs are each redacted, and so is one without
    a scheme (``user:password@registry:8081``, which the registry client refuses in
    an error that quotes it).
    """
    parts = []
    for one in url.split(","):
        scheme, sep, rest = one.partition("://")
        if not sep:
            scheme, rest = "", one
        userinfo, at, host = rest.rpartition("@")
        if at:
            # A userinfo without ':' is a token alone (``https://TOKEN@registry``).
            user, colon, _ = userinfo.partition(":")
            one = (
                f"{scheme}{sep}{user}:{REDACTED}@{host}"
                if colon
                else f"{scheme}{sep}{REDACTED}@{host}"
            )
        parts.append(one)
    return ",".join(parts)


def resolve_bootstrap(explicit: str | None, config: Mapping[str, Any] | None = None) -> str:
    """The bootstrap servers: argument, then ``kafka_config``, then the environment."""
    if explicit:
        return explicit
    if config and config.get("bootstrap.servers"):
        return str(config["bootstrap.servers"])
    from_env = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if from_env:
        return from_env
    raise ConfigurationError(
        "no Kafka bootstrap servers given: use --bootstrap-servers host:9092 (in Python: "
        "bootstrap_servers=... or 'bootstrap.servers' in kafka_config), or export "
        f"{BOOTSTRAP_ENV}=host:9092 "
        "(`streamguard broker` starts a local one)."
    )


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bootstrap-servers`` and ``-X/--kafka-config KEY=VALUE``, alike on every command."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"the Kafka cluster (default: ${BOOTSTRAP_ENV})",
    )
    parser.add_argument(
        "-X",
        "--kafka-config",
        dest="kafka_config",
        action="append",
        metavar="KEY=VALUE",
        help="a librdkafka setting such as security.protocol=SASL_SSL (repeatable)",
    )
    parser.add_argument(
        "--kafka-config-env",
        dest="kafka_config_env",
        action="append",
        metavar="KEY=VARIABLE",
        help="a librdkafka setting read from an environment variable, such as "
        "sasl.password=KAFKA_PASSWORD: a secret stays off the command line, which every "
        "process on the host can read (repeatable)",
    )


def tcp_port(text: str, lowest: int = 0) -> int:
    """A command's ``--port``-like argument: a TCP port, ``lowest`` to 65535, or a usage
    error naming the range (0, where allowed, picks a free port)."""
    import argparse  # only a command parses arguments

    try:
        port = int(text)
    except ValueError:
        port = -1
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port ({lowest}-65535)")
    return port


def bind_address(text: str) -> str:
    """A command's ``--host`` to listen on, or a usage error when empty: a socket bound
    to "" listens on every interface, where "(loopback)" is the promise."""
    import argparse  # only a command parses arguments

    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected an address (127.0.0.1, or 0.0.0.0 for every interface), got an empty string"
        )
    return text


def directory(text: str) -> Path:
    """A command's folder argument (``--out``, ``--dir``), or a usage error when empty:
    ``Path("")`` is the current directory, so an unset ``--dir "$DIR"`` would write
    there, not do what leaving the option out does."""
    import argparse  # only a command parses arguments

    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty string")
    return Path(text)


# confluent-kafka's settings that take a Python callable: from a command line they are
# text, which the client refuses with a TypeError when it is built (a traceback).
CALLABLE_SETTINGS = frozenset(
    ("error_cb", "logger", "oauth_cb", "on_commit", "on_delivery", "stats_cb", "throttle_cb")
)


def refuse_callable_setting(key: str, option: str) -> None:
    """A usage error for ``key`` given on the command line with ``option`` if only a
    Python callable (``error_cb``...) or a dict (``default.topic.config``) can be its
    value. The value is not shown: it may be a secret meant for another key."""
    if key in CALLABLE_SETTINGS:
        raise ConfigurationError(
            f"{option} {key}: this setting takes a Python callable and cannot be "
            "given on the command line (set it in the service's kafka_config)"
        )
    if key == "default.topic.config":  # a dict: as text, an AttributeError traceback
        raise ConfigurationError(
            f"{option} {key}: this setting takes a dict and cannot be given on the "
            "command line; give each topic setting as a key of its own"
        )


def kafka_config_from_args(
    items: list[str] | None, from_env: list[str] | None = None
) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options into a librdkafka config dict.

    Args:
        items: ``-X/--kafka-config KEY=VALUE`` options.
        from_env: ``--kafka-config-env KEY=VARIABLE`` options: KEY's value is the
            environment variable's. A process's arguments are readable by every user
            and process of the host (``ps``, ``/proc/PID/cmdline``, process
            monitors), its environment only by its own user: secrets belong there.
    """
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Not the item itself: a mistyped "sasl.password:..." would print the secret.
            raise ConfigurationError(
                f"--kafka-config: an item has no '=' (or no key) in its {len(item)} "
                "characters; expected librdkafka KEY=VALUE"
            )
        refuse_callable_setting(key.strip(), "--kafka-config")
        config[key.strip()] = value
    for item in from_env or []:
        key, sep, variable = (part.strip() for part in item.partition("="))
        if not sep or not key or not variable:
            # Not the item itself: "sasl.password:hunter2", meant for -X, is the secret.
            raise ConfigurationError(
                f"--kafka-config-env: an item of {len(item)} characters is not "
                "KEY=VARIABLE (not shown: it may hold a secret); expected KEY=VARIABLE "
                "such as sasl.password=KAFKA_PASSWORD"
            )
        if variable not in os.environ:
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", variable):
                # Perhaps the secret itself, given here as to -X: never echoed.
                raise ConfigurationError(
                    f"--kafka-config-env {key}=...: no environment variable of that name "
                    "is set, and it does not look like one (not shown: it may be the "
                    "value itself); give the variable's name, or the value with -X"
                )
            raise ConfigurationError(
                f"--kafka-config-env {key}={variable}: the environment variable "
                f"{variable} is not set"
            )
        refuse_callable_setting(key, "--kafka-config-env")
        config[key] = os.environ[variable]
    return config


def client_config(
    bootstrap_servers: str | None,
    kafka_config: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """Layer a client's config: our defaults, then the user's ``kafka_config``."""
    merged: dict[str, Any] = dict(defaults)
    merged.update(kafka_config or {})
    merged["bootstrap.servers"] = resolve_bootstrap(bootstrap_servers, kafka_config)
    return merged

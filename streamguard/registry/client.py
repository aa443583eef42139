"""Reaching a Confluent-compatible schema registry: configuration, client, errors, subjects.

The client is confluent-kafka's own ``SchemaRegistryClient``; this module only decides
where its configuration comes from, keeps credentials out of every text we print, turns
"cannot reach the registry" into ``RegistryUnavailable`` and names subjects the way
Confluent's serializers do.

The configuration is the client's own dict (``url``, ``basic.auth.user.info``,
``ssl.*``, ...). It resolves in layers: an explicit dict or URL, then
``$STREAMGUARD_SCHEMA_REGISTRY_URL``, then (for the CLI) ``[tool.streamguard]
schema_registry_url``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from streamguard.errors import ConfigurationError, RegistryUnavailable, extra_hint
from streamguard.settings import redact, redact_url

REGISTRY_URL_ENV = "STREAMGUARD_SCHEMA_REGISTRY_URL"

SubjectNameStrategy = Literal["TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"]
STRATEGIES: tuple[SubjectNameStrategy, ...] = (
    "TopicNameStrategy",
    "RecordNameStrategy",
    "TopicRecordNameStrategy",
)

# The client retries a failed request itself (3 times, up to 20 s by default) while the
# caller waits. A consumer's worker would hold its partition that long per attempt, so
# streamguard's defaults keep the client's own retries short and let the service's
# RetryPolicy do the waiting; a user's own values win.
CLIENT_DEFAULTS: Mapping[str, Any] = {
    "max.retries": 1,
    "retries.wait.ms": 100,
    "retries.max.wait.ms": 1000,
    "timeout": 10,
}

# HTTP statuses that say "not now" rather than "no such schema": the registry is
# overloaded, restarting or behind a failing proxy, or refuses our credentials. None of
# them is a record's fault, so records wait rather than being dead-lettered.
_UNAVAILABLE_STATUS = frozenset({401, 403, 408, 429, 500, 502, 503, 504})

T = TypeVar("T")


def resolve_registry_config(
    explicit: Mapping[str, Any] | str | None, configured_url: str | None = None
) -> dict[str, Any] | None:
    """The registry client's config, or None when no registry is configured.

    Args:
        explicit: a client config dict or a URL (``schema_registry=`` or a CLI flag).
        configured_url: ``[tool.streamguard] schema_registry_url``, below the environment.
    """
    if isinstance(explicit, str):
        explicit = {"url": explicit}
    if explicit:
        config = dict(explicit)
        if not isinstance(config.get("url"), str) or not config["url"].strip():
            raise ConfigurationError(
                "schema_registry needs a 'url', e.g. {'url': 'http://registry:8081', "
                "'basic.auth.user.info': 'user:password'}"
            )
        return config
    url = os.environ.get(REGISTRY_URL_ENV, "").strip() or (configured_url or "").strip()
    return {"url": url} if url else None


def redact_registry_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to show or log: secret keys and the URL's password replaced by ``***``."""
    shown = redact(config)
    if isinstance(shown.get("url"), str):
        shown["url"] = redact_url(shown["url"])
    return shown


def new_client(config: Mapping[str, Any]) -> Any:
    """A ``SchemaRegistryClient`` for ``config`` (streamguard's retry defaults below it).

    Raises:
        ConfigurationError: the registry extra is not installed, or the config is invalid.
    """
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # httpx/authlib/attrs/cachetools come with the extra
        raise ConfigurationError(
            f"schema registry support needs its extra: {extra_hint('registry')} ({exc})"
        ) from None
    try:
        return SchemaRegistryClient({**CLIENT_DEFAULTS, **_credentials_out_of_url(config)})
    except (ValueError, TypeError) as exc:
        shown = redact_registry_config(config)
        raise ConfigurationError(
            f"invalid schema registry config {shown}: {_without_urls(str(exc), config)}"
        ) from None


def _without_urls(text: str, config: Mapping[str, Any]) -> str:
    """``text`` (the client's error) with each URL of ``config`` it quotes redacted.

    The client refuses a URL without an http(s) scheme by quoting it ("Invalid url
    user:password@registry:8081"), credentials and all.
    """
    url = config.get("url")
    if not isinstance(url, str):
        return text
    for one in url.split(","):
        quoted = one.strip().rstrip("/")  # as the client quotes it
        if quoted:
            text = text.replace(quoted, redact_url(quoted))
    return text


def _credentials_out_of_url(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` with a URL's ``user:password@`` moved to ``basic.auth.user.info``.

    The client authenticates with the first URL's userinfo either way, but it sends its
    requests to the URLs as given, and its HTTP library logs every request's URL at
    INFO: with the credentials in it, ``streamguard run`` wrote the password in clear on
    every registry request. A config that also sets ``basic.auth.user.info`` is left
    for the client to refuse, as it does, unless the userinfo is a token alone, which
    the client lets through.

    Raises:
        ConfigurationError: a URL after the first carries other credentials than the
            first. The client authenticates every URL with the first's (or none), so
            they would not be used as written, and requests to that URL would log them.
            Or a URL's password holds an unencoded '/', '?' or '#'. Or the first URL
            carries a token and ``basic.auth.user.info`` is set too.
    """
    url = config.get("url")
    if not isinstance(url, str) or "@" not in url:
        return config
    urls = [urlsplit(one.strip()) for one in url.split(",")]
    for one in urls:
        if one.netloc and "@" not in one.netloc and "@" in urlunsplit(one):
            # The '@' lies past the host: a '/', '?' or '#' in the password ended the
            # host part early, and the HTTP client's "Invalid port" error quoted the
            # password up to it.
            raise ConfigurationError(
                f"the schema registry URL {redact_url(urlunsplit(one))} has an '@' after "
                "its host: percent-encode a '/', '?' or '#' in the password (%2F, %3F, "
                "%23), or set 'basic.auth.user.info'"
            )
    first = urls[0]
    for later in urls[1:]:
        if "@" in later.netloc and _userinfo(later) != _userinfo(first):
            raise ConfigurationError(
                f"the schema registry URL {redact_url(urlunsplit(later))} carries other "
                "credentials than the first URL, and the client authenticates every URL "
                "with the first's: give each URL the same user:password, or none and "
                "set 'basic.auth.user.info'"
            )
    if "basic.auth.user.info" in config:
        if first.username and first.password is None:
            # The client refuses a user:password@ beside it, not a token alone, which
            # then stayed in the URL that each request's log line shows.
            raise ConfigurationError(
                f"the schema registry URL {redact_url(urlunsplit(first))} carries a "
                "credential and 'basic.auth.user.info' is set too: keep only one"
            )
        return config
    if "@" not in first.netloc:
        return config
    # A user alone too: the HTTP client sends ``https://TOKEN@registry``'s token as
    # basic auth (with an empty password), and logged it with each request's URL.
    user, password = _userinfo(first)
    bare = ",".join(urlunsplit(one._replace(netloc=one.netloc.rpartition("@")[2])) for one in urls)
    return {**config, "url": bare, "basic.auth.user.info": f"{user}:{password}"}


def _userinfo(url: SplitResult) -> tuple[str, str]:
    """A URL's ``user:password@`` (either may be empty), decoded."""
    return unquote(url.username or ""), unquote(url.password or "")


def registry_error_code(exc: BaseException) -> int | None:
    """The registry's ``error_code`` (40401, 409, ...) of a refused request, else None."""
    code = getattr(exc, "error_code", None)
    status = getattr(exc, "http_status_code", None)
    if isinstance(code, int) and isinstance(status, int):
        return code
    return None


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` means the registry was not reached or could not answer now."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int):
        return status in _UNAVAILABLE_STATUS
    try:
        from confluent_kafka.schema_registry.common._httpx_compat import httpx
    except ImportError:  # pragma: no cover - the extra is installed whenever a client exists
        return isinstance(exc, OSError)
    return isinstance(exc, httpx.TransportError | OSError)


def call(url: str, request: Callable[[], T]) -> T:
    """Run one client request; a registry that cannot be reached raises RegistryUnavailable.

    Refusals (unknown subject, incompatible schema, ...) pass through as the client's
    ``SchemaRegistryError`` for the caller to read ``error_code``.
    """
    try:
        return request()
    except Exception as exc:
        if is_unavailable(exc):
            what = (
                f"schema registry at {redact_url(url)} is unavailable ({type(exc).__name__}"
                f"{_status(exc)})"
            )
            raise RegistryUnavailable(
                f"{what}; records needing it wait and are retried", registry=what
            ) from None
        raise


def _status(exc: BaseException) -> str:
    status = getattr(exc, "http_status_code", None)
    return f" {status}" if isinstance(status, int) else ""


def subject_name(strategy: SubjectNameStrategy, topic: str, record_name: str) -> str:
    """The subject a value schema is registered under, as Confluent's serializers name it.

    ``TopicNameStrategy``: ``<topic>-value``; ``RecordNameStrategy``: the record's full
    name; ``TopicRecordNameStrategy``: ``<topic>-<record name>``.
    """
    if strategy == "TopicNameStrategy":
        return f"{topic}-value"
    if strategy == "RecordNameStrategy":
        return record_name
    if strategy == "TopicRecordNameStrategy":
        return f"{topic}-{record_name}"
    raise ConfigurationError(
        f"unknown subject name strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
    )

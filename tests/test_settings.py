"""Settings resolve the bootstrap address in layers and never show secret values."""

from __future__ import annotations

import pytest

from streamguard.errors import ConfigurationError
from streamguard.settings import (
    BOOTSTRAP_ENV,
    CALLABLE_SETTINGS,
    REDACTED,
    client_config,
    is_secret,
    kafka_config_from_args,
    redact,
    redact_url,
    refused_setting_text,
    resolve_bootstrap,
)


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "sasl.oauthbearer.client.secret",
        "ssl.keystore.password",
        "sasl.jaas.config",
        "sasl.oauthbearer.config",
        "SASL.PASSWORD",
    ],
)
def test_redact_hides_secret_values(key: str) -> None:
    """Secret-bearing keys keep their name but lose their value."""
    redacted = redact({key: "hunter2", "bootstrap.servers": "kafka:9092"})
    assert redacted == {key: REDACTED, "bootstrap.servers": "kafka:9092"}
    assert is_secret(key)


def test_redact_keeps_ordinary_settings_and_the_original() -> None:
    """Non-secret settings are shown as they are, and the input mapping is not modified."""
    config = {"security.protocol": "SASL_SSL", "sasl.username": "svc", "sasl.password": "x"}
    assert redact(config) == {
        "security.protocol": "SASL_SSL",
        "sasl.username": "svc",
        "sasl.password": "***",
    }
    assert config["sasl.password"] == "x"
    assert not is_secret("sasl.username")


def test_explicit_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit bootstrap argument beats kafka_config and the environment."""
    monkeypatch.setenv(BOOTSTRAP_ENV, "env:9092")
    assert resolve_bootstrap("arg:9092", {"bootstrap.servers": "cfg:9092"}) == "arg:9092"


def test_kafka_config_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an argument, bootstrap.servers in kafka_config beats the environment."""
    monkeypatch.setenv(BOOTSTRAP_ENV, "env:9092")
    assert resolve_bootstrap(None, {"bootstrap.servers": "cfg:9092"}) == "cfg:9092"


def test_environment_is_the_last_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without argument or config, STREAMGUARD_BOOTSTRAP_SERVERS is used, stripped."""
    monkeypatch.setenv(BOOTSTRAP_ENV, "  env:9092 \n")
    assert resolve_bootstrap(None, {"client.id": "x"}) == "env:9092"
    assert resolve_bootstrap("", None) == "env:9092"


@pytest.mark.parametrize("env_value", [None, "", "   "])
def test_nothing_given_is_an_error_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, env_value: str | None
) -> None:
    """With no layer set (or a blank variable) the error names every way to set it."""
    if env_value is None:
        monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    else:
        monkeypatch.setenv(BOOTSTRAP_ENV, env_value)
    with pytest.raises(ConfigurationError) as info:
        resolve_bootstrap(None, {"bootstrap.servers": ""})
    text = str(info.value)
    assert "bootstrap_servers=" in text
    assert "'bootstrap.servers' in kafka_config" in text
    assert f"{BOOTSTRAP_ENV}=host:9092" in text
    assert "streamguard broker" in text


def test_client_config_layers_defaults_then_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """User kafka_config overrides the defaults, and bootstrap.servers is the resolved one."""
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    merged = client_config(
        "arg:9092", {"acks": "1", "client.id": "me"}, {"acks": "all", "linger.ms": 5}
    )
    assert merged == {
        "acks": "1",
        "linger.ms": 5,
        "client.id": "me",
        "bootstrap.servers": "arg:9092",
    }


@pytest.mark.parametrize("item", ["sasl.password:zqSECRETqz", "sasl.password zqSECRETqz"])
def test_a_mistyped_option_is_refused_without_echoing_it(item: str) -> None:
    """An -X item without '=' may hold a secret (args filled from a Secret): the error
    says what is wrong without printing it."""
    from streamguard.settings import kafka_config_from_args

    with pytest.raises(ConfigurationError, match="expected librdkafka KEY=VALUE") as info:
        kafka_config_from_args([item])
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://svc:hunter2@registry:8081", "http://svc:***@registry:8081"),
        ("svc:hunter2@registry:8081", "svc:***@registry:8081"),
        ("http://a:hunter2@r1, svc:hunter2@r2", "http://a:***@r1, svc:***@r2"),
        ("http://registry:8081", "http://registry:8081"),
    ],
)
def test_redact_url_hides_the_password_with_or_without_a_scheme(url: str, shown: str) -> None:
    """A URL's user:password@ loses its password, also in a URL missing its scheme."""
    assert redact_url(url) == shown


def test_redact_shows_callables_and_containers_by_type_only() -> None:
    """A callback bound to a secret (``functools.partial``) or a dict of credentials
    under a key that names no secret is shown by its type, never its repr."""
    from functools import partial

    def get_token(client_secret: str, config: str) -> tuple[str, float]:
        return "token", 0.0

    config = {
        "oauth_cb": partial(get_token, "zqSECRETqz"),
        "bearer.auth.custom.provider.config": {"client_secret": "zqSECRETqz"},
        "linger.ms": 5,
        "enable.idempotence": True,
    }
    shown = redact(config)
    assert "zqSECRETqz" not in repr(shown)
    assert shown == {
        "oauth_cb": "<partial>",
        "bearer.auth.custom.provider.config": "<dict>",
        "linger.ms": 5,
        "enable.idempotence": True,
    }


def test_a_setting_read_from_the_environment_stays_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--kafka-config-env KEY=VARIABLE`` (on ``run`` and the ``dlq`` commands) takes
    KEY's value from the environment, so the command line names only the variable; it
    wins over an -X of the same key."""
    from streamguard.cli import build_parser
    from streamguard.settings import kafka_config_from_args

    monkeypatch.setenv("KAFKA_PASSWORD", "zqSECRETqz")
    for command in (["run", "m:C"], ["dlq", "inspect", "t.dlq"], ["dlq", "replay", "t.dlq"]):
        argv = [
            *command,
            "-X",
            "sasl.username=svc",
            "-X",
            "sasl.password=stale",
            "--kafka-config-env",
            "sasl.password=KAFKA_PASSWORD",
        ]
        args = build_parser().parse_args(argv)
        assert kafka_config_from_args(args.kafka_config, args.kafka_config_env) == {
            "sasl.username": "svc",
            "sasl.password": "zqSECRETqz",
        }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("sasl.password=NOT_SET_ANYWHERE", "environment variable NOT_SET_ANYWHERE is not set"),
        # The secret itself, given as to -X: refused without echoing it.
        ("sasl.password=hunter2!", r"sasl.password=\.\.\.: no environment variable"),
        ("sasl.password", "expected KEY=VARIABLE"),
        ("=KAFKA_PASSWORD", "expected KEY=VARIABLE"),
        # The secret itself, mistyped as to -X (no '=', or no key): not echoed either.
        ("sasl.password:hunter2", "expected KEY=VARIABLE"),
        ("=hunter2", "expected KEY=VARIABLE"),
    ],
)
def test_a_setting_from_a_missing_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, item: str, message: str
) -> None:
    """A variable that is not set, or an item that is not KEY=VARIABLE, is refused,
    never taken as an empty setting, and never with a value that may be the secret."""
    from streamguard.settings import kafka_config_from_args

    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigurationError, match=message) as refused:
        kafka_config_from_args(None, [item])
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("client", "setting"),
    [
        ("consumer", {"security.protocol": "Hunter2Secret"}),
        ("producer", {"partitioner": "Hunter2Secret"}),
        ("consumer", {"security.protocol": "sasl_plaintext", "sasl.mechanism": "Hunter2Secret"}),
        ("consumer", {"partition.assignment.strategy": "Hunter2Secret"}),
    ],
)
def test_a_refused_setting_text_never_holds_the_value(client: str, setting: dict[str, str]) -> None:
    """librdkafka quotes the value it refuses (``Invalid value "..." for ...``), or puts
    it last, after a colon (``...property "partitioner": ...``, ``Failed to create
    consumer: Unsupported SASL mechanism: ...``): each form is shown without it."""
    from confluent_kafka import Consumer, KafkaException, Producer

    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g", **setting}
    with pytest.raises(KafkaException) as refused:
        (Consumer if client == "consumer" else Producer)(config)
    text = refused.value.args[0].str()
    assert "Hunter2Secret" in text  # librdkafka's own text holds it
    shown = refused_setting_text(text)
    assert "Hunter2Secret" not in shown
    assert shown.strip(), text


@pytest.mark.parametrize("key", sorted(CALLABLE_SETTINGS))
def test_a_callable_setting_from_the_command_line_is_a_usage_error(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-X error_cb=...`` reached the client as text, which it refused with a
    TypeError traceback when it was built: a usage error naming the key, not the value."""
    monkeypatch.setenv("SG_TEST_CALLBACK", "Hunter2Secret")
    for args in (([f"{key}=Hunter2Secret"], None), (None, [f"{key}=SG_TEST_CALLBACK"])):
        with pytest.raises(ConfigurationError, match="takes a Python callable") as refused:
            kafka_config_from_args(*args)
        assert key in str(refused.value)
        assert "Hunter2Secret" not in str(refused.value)


def test_default_topic_config_from_the_command_line_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-X default.topic.config=...`` reached the client as text, which it refused with
    an AttributeError traceback (``'str' object has no attribute 'keys'``) when it was
    built: a usage error naming the key, not the value, and what to give instead."""
    monkeypatch.setenv("SG_TEST_TOPIC_CONFIG", "Hunter2Secret")
    for args in (
        (["default.topic.config=Hunter2Secret"], None),
        (None, ["default.topic.config=SG_TEST_TOPIC_CONFIG"]),
    ):
        with pytest.raises(ConfigurationError, match="takes a dict") as refused:
            kafka_config_from_args(*args)
        assert "default.topic.config" in str(refused.value)
        assert "Hunter2Secret" not in str(refused.value)

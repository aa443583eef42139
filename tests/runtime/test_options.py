"""ServiceOptions refuses a wrong value when it is built, with the option's name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

import streamguard as sg


def test_defaults_are_valid() -> None:
    sg.ServiceOptions()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("batch_size", "500", "batch_size must be an int, not str"),
        ("batch_size", True, "batch_size must be an int, not bool"),
        ("batch_size", 500.0, "batch_size must be an int, not float"),
        ("pause_after", None, "pause_after must be a number, not NoneType"),
        ("broker_timeout", "30", "broker_timeout must be a number or None, not str"),
        ("dead_letter_log_rate", False, "dead_letter_log_rate must be a number or None"),
        ("release_memory", "no", "release_memory must be True or False, not str"),
        ("release_memory", 1, "release_memory must be True or False, not int"),
        ("event_loop", "uvloop", "event_loop must be 'auto' or 'asyncio', not 'uvloop'"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(option: str, value: Any, message: str) -> None:
    with pytest.raises(sg.ConfigurationError, match=message):
        sg.ServiceOptions(**{option: value})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("workers", 0, "workers must be at least 1"),
        ("pause_after", 6, "pause_after must be 0-5 seconds"),
        ("commit_interval", 0, "commit_interval must be positive seconds"),
        ("dead_letter_log_rate", 0, "dead_letter_log_rate must be positive"),
        ("broker_timeout", -1, "broker_timeout must be positive seconds"),
        ("revoke_timeout", 20.0, r"revoke_timeout \(20\) must not exceed shutdown_timeout \(10\)"),
        # revoke_timeout's default (5) is over it: the message says to set both.
        ("shutdown_timeout", 2.0, r"revoke_timeout \(5\) .* set revoke_timeout too"),
        ("dead_letter_backoff_max", 0, "dead_letter_backoff_max must be positive seconds"),
        ("commit_interval", float("inf"), "commit_interval must be finite seconds"),
        ("commit_interval", float("nan"), "commit_interval must be a number, not NaN"),
        ("dead_letter_log_rate", float("nan"), "dead_letter_log_rate must be a number, not NaN"),
        ("shutdown_timeout", float("nan"), "shutdown_timeout must be a number, not NaN"),
        # Infinite, it crashed the stop with an OverflowError before anything was committed.
        ("shutdown_timeout", float("inf"), "shutdown_timeout must be finite seconds"),
        ("shutdown_timeout", 1e10, "shutdown_timeout must be finite seconds, at most 86400"),
    ],
)
def test_a_value_out_of_range_is_refused(option: str, value: Any, message: str) -> None:
    with pytest.raises(sg.ConfigurationError, match=message):
        sg.ServiceOptions(**{option: value})


def test_seconds_take_ints_and_optional_options_take_none() -> None:
    options = sg.ServiceOptions(
        pause_after=1, commit_interval=2, broker_timeout=None, dead_letter_log_rate=None
    )
    assert options.pause_after == 1
    assert options.broker_timeout is None


def test_every_option_is_type_checked() -> None:
    """A new option gets the check without a line of its own: a string is wrong for
    every option but ``event_loop``, whose values are strings."""
    for option in fields(sg.ServiceOptions):
        if option.name == "event_loop":
            continue
        with pytest.raises(sg.ConfigurationError, match=f"ServiceOptions.{option.name} must"):
            sg.ServiceOptions(**{option.name: "1"})

"""streamguard: schema-guarded Kafka consumers that never lose a message.

Everything public is named here; implementation modules may change.
"""

from typing import TYPE_CHECKING

from streamguard.codecs import AvroCodec, Codec, JsonCodec
from streamguard.contracts import Contract, registered_contracts
from streamguard.deadletter import DeadLetter, Failure
from streamguard.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ContractViolation,
    DecodeError,
    DeliveryFailed,
    PermanentError,
    RegistryUnavailable,
    RetriesExhausted,
    StreamguardError,
    TransientError,
)
from streamguard.lazy import lazy_exports
from streamguard.policy import CircuitBreaker, RetryPolicy
from streamguard.producer import GuardedProducer
from streamguard.registry import RegistryCodec
from streamguard.runtime import ConsumerService, MessageContext, ServiceOptions, run_services

if TYPE_CHECKING:
    from streamguard.devbroker import DevBroker
    from streamguard.registry import RegistryServer

# The release, as pyproject.toml's [project] version (a test keeps the two equal): read
# here, not through importlib.metadata, which a service's process need not load.
__version__ = "0.1.0"

__all__ = [
    "AvroCodec",
    "BrokerUnavailable",
    "CircuitBreaker",
    "Codec",
    "ConfigurationError",
    "ConsumerService",
    "Contract",
    "ContractViolation",
    "DeadLetter",
    "DecodeError",
    "DeliveryFailed",
    "DevBroker",
    "Failure",
    "GuardedProducer",
    "JsonCodec",
    "MessageContext",
    "PermanentError",
    "RegistryCodec",
    "RegistryServer",
    "RegistryUnavailable",
    "RetriesExhausted",
    "RetryPolicy",
    "ServiceOptions",
    "StreamguardError",
    "TransientError",
    "registered_contracts",
    "run_services",
]


# The embedded broker and registry load on first use (streamguard.registry says where
# the registry's server is): a service never needs them.
if not TYPE_CHECKING:  # type checkers see the imports above
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {"DevBroker": "streamguard.devbroker", "RegistryServer": "streamguard.registry"},
    )

"""Confluent Schema Registry support: the wire format, the client, an embedded registry.

Modules: :mod:`.client` (configuration, ``SchemaRegistryClient``, subject naming),
:mod:`.codec` (the Confluent framing, both directions), :mod:`.state` and
:mod:`.server` (the embedded registry ``streamguard registry`` runs), :mod:`.checks`
(``streamguard schema check/register --registry``).
"""

from typing import TYPE_CHECKING, Any

from streamguard.registry.codec import RegistryCodec

if TYPE_CHECKING:
    from streamguard.registry.server import RegistryServer

__all__ = ["RegistryCodec", "RegistryServer"]


if not TYPE_CHECKING:  # type checkers see the import above; an unknown name stays an error

    def __getattr__(name: str) -> Any:
        # The embedded registry (an HTTP server, the compatibility checks, fastavro) loads on
        # first use: services and producers never need it.
        if name == "RegistryServer":
            from streamguard.registry.server import RegistryServer

            globals()[name] = RegistryServer  # once: later reads find it here
            return RegistryServer
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), "RegistryServer"})

"""Confluent Schema Registry support: the wire format, the client, an embedded registry.

Modules: :mod:`.client` (configuration, ``SchemaRegistryClient``, subject naming),
:mod:`.codec` (the Confluent framing, both directions), :mod:`.state` and
:mod:`.server` (the embedded registry ``streamguard registry`` runs), :mod:`.checks`
(``streamguard schema check/register --registry``).
"""

from typing import TYPE_CHECKING

from streamguard.lazy import lazy_exports
from streamguard.registry.codec import RegistryCodec

if TYPE_CHECKING:
    from streamguard.registry.server import RegistryServer

__all__ = ["RegistryCodec", "RegistryServer"]


# The embedded registry (an HTTP server, the compatibility checks, fastavro) loads on
# first use: services and producers never need it.
if not TYPE_CHECKING:  # type checkers see the import above
    __getattr__, __dir__ = lazy_exports(
        globals(), {"RegistryServer": "streamguard.registry.server"}
    )

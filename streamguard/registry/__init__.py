"""Confluent Schema Registry support: the wire format, the client, an embedded registry.

Modules: :mod:`.client` (configuration, ``SchemaRegistryClient``, subject naming),
:mod:`.codec` (the Confluent framing, both directions), :mod:`.state` and
:mod:`.server` (the embedded registry ``streamguard registry`` runs), :mod:`.checks`
(``streamguard schema check/register --registry``).
"""

from streamguard.registry.codec import RegistryCodec
from streamguard.registry.server import RegistryServer

__all__ = ["RegistryCodec", "RegistryServer"]

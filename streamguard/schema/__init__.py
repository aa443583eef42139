"""Schema compatibility and the schema store (the control plane's schema half).

``streamguard schema ...`` drives it from the shell (:mod:`.commands`); the consumer
runtime uses :class:`DriftDetector` per message. Modules: :mod:`.store` (files under
``schemas/``), :mod:`.rules`, :mod:`.jsonschema_compat` and :mod:`.jsonschema_objects`
(JSON Schema rules), :mod:`.avro` (Avro contracts), :mod:`.changes` (both directions of
a change), :mod:`.modes`, :mod:`.checks` (contracts vs store), :mod:`.report`,
:mod:`.drift`.
"""

from streamguard.schema.changes import Change, diff_json_schemas
from streamguard.schema.drift import DriftDetector, FirstSeen
from streamguard.schema.store import SchemaStore

__all__ = ["Change", "DriftDetector", "FirstSeen", "SchemaStore", "diff_json_schemas"]

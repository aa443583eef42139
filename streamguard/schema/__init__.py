"""Schema compatibility and the schema store (the control plane's schema half).

``streamguard schema ...`` drives it from the shell (:mod:`.commands`); the consumer
runtime uses :class:`DriftDetector` per message. Modules: :mod:`.store` (files under
``schemas/``), :mod:`.rules`, :mod:`.jsonschema_compat` and :mod:`.jsonschema_objects`
(JSON Schema rules), :mod:`.avro` (Avro contracts), :mod:`.changes` (both directions of
a change), :mod:`.modes`, :mod:`.checks` (contracts vs store), :mod:`.report`,
:mod:`.drift`.

The names below load on first use: a service reaches this package only for the drift
check (:mod:`.drift`), and the compatibility rules and the store are the CLI's and the
registry's.
"""

from typing import TYPE_CHECKING

from streamguard.lazy import lazy_exports

if TYPE_CHECKING:
    from streamguard.schema.changes import Change, diff_json_schemas
    from streamguard.schema.drift import DriftDetector, FirstSeen
    from streamguard.schema.store import SchemaStore

__all__ = ["Change", "DriftDetector", "FirstSeen", "SchemaStore", "diff_json_schemas"]

if not TYPE_CHECKING:  # type checkers see the imports above
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "Change": "streamguard.schema.changes",
            "diff_json_schemas": "streamguard.schema.changes",
            "DriftDetector": "streamguard.schema.drift",
            "FirstSeen": "streamguard.schema.drift",
            "SchemaStore": "streamguard.schema.store",
        },
    )

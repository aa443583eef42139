"""Dead-letter tooling: ``streamguard dlq inspect`` and ``streamguard dlq replay``.

``reader`` reads a DLQ to its end-at-start without joining a group, ``inspect`` groups
and renders what it holds, ``selection`` and ``replay`` pick records and republish
them safely, and ``commands`` wires both into the ``streamguard`` command.
"""

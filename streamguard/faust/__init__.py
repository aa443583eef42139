"""faust-streaming integration: guarded agents.

``guarded_agent`` turns an ``async def handler(event, ctx)`` into a Faust agent with
the guard of a ``ConsumerService``: raw bytes decoded and validated by streamguard's
codecs, dead letters with the same ``sg-dlq-*`` headers, bounded retry, drift counting,
the same metrics (``runtime="faust"``), and offsets acknowledged only for final
outcomes, in offset order per partition. See docs/consumer.md, "ConsumerService or a
guarded Faust agent".

Needs the ``faust`` extra: ``pip install -e '.[faust]'`` in a streamguard checkout (the
``streamguard`` on PyPI is an unrelated project).
"""

from __future__ import annotations

from streamguard.errors import extra_hint

try:
    import faust as _faust  # noqa: F401  # only to fail early with an install hint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"streamguard.faust needs faust-streaming: {extra_hint('faust')}") from exc

from streamguard.faust.agent import GuardedAgent, guarded_agent

__all__ = ["GuardedAgent", "guarded_agent"]

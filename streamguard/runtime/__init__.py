"""The data plane's consumer runtime: service, lanes, poll loop."""

from streamguard.runtime.context import MessageContext
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.service import ConsumerService

__all__ = ["ConsumerService", "MessageContext", "ServiceOptions"]

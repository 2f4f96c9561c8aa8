"""Server hardening that sits below the routes: Host allow-list, hostile JSON, API-key sources, connection
deadlines.

- :class:`HostAllowList` answers 400 to a request whose ``Host`` header is not allowed (default: the loopback
  names and the address the server binds), so a web page on another origin cannot reach a local server through
  DNS rebinding. ``*`` allows every host.
- :func:`parse_json` turns every hostile body (deep nesting, integers with thousands of digits, invalid UTF-8)
  into a 400 :class:`APIError`, never a 500 (strings that cannot be encoded, lone surrogates from ``\\ud800``
  escapes, are refused by the request parser).
- :func:`resolve_api_key` reads the key from ``--api-key-file`` or the ``SUMI_API_KEY`` environment variable, so
  it need not appear on the command line (where ``ps`` shows it).
- :class:`DeadlineH11Protocol` closes a connection that does not deliver a complete request head within
  ``header_timeout`` seconds (idle, half-open or slowloris clients), which uvicorn alone does not do.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from sumi.errors import ConfigError
from sumi.serve.protocol import APIError

API_KEY_ENV = "SUMI_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


# ---------------------------------------------------------------------------------------------- Host header
def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """The loopback names plus the bound address (a wildcard bind adds nothing: list the names you serve)."""
    extra = () if bind_host in ("0.0.0.0", "::", "") else (bind_host,)
    return LOOPBACK_HOSTS + extra


def _host_name(header: str) -> str:
    """``Host`` without the port: ``example.com:8000`` → ``example.com``, ``[::1]:8000`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostAllowList:
    """ASGI middleware: HTTP requests whose Host is not in ``allowed`` get 400 (``*`` allows any host)."""

    def __init__(self, app, allowed: tuple[str, ...] | list[str]) -> None:
        self.app = app
        self.allowed = {h.strip().lower().strip("[]") for h in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if _host_name(host) in self.allowed:
            await self.app(scope, receive, send)
            return
        body = json.dumps(APIError(400, f"the Host header {host!r} is not allowed by this server; start it with "
                                        "--allowed-host NAME to serve that name", code="invalid_host").body())
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})


# ---------------------------------------------------------------------------------------------- hostile JSON
def parse_json(body: bytes) -> Any:
    """A JSON document; any malformed or hostile input raises APIError 400 (never RecursionError / 500)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise APIError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, non-UTF-8 bytes, integers beyond Python's digit limit
        raise APIError(400, f"could not parse the JSON body: {exc}", code="invalid_json") from None


# ---------------------------------------------------------------------------------------------- API key
def resolve_api_key(cli_value: str | None, key_file: str | None) -> str | None:
    """The API key from ``--api-key``, ``--api-key-file`` or ``$SUMI_API_KEY`` (at most one source)."""
    env_value = os.environ.get(API_KEY_ENV) or None
    given = [name for name, v in (("--api-key", cli_value), ("--api-key-file", key_file),
                                  (f"${API_KEY_ENV}", env_value)) if v]
    if len(given) > 1:
        raise ConfigError(f"the API key is given twice ({' and '.join(given)}); keep one")
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --api-key-file {key_file}: {exc}") from None
        if not key:
            raise ConfigError(f"--api-key-file {key_file} is empty")
        return key
    return cli_value or env_value


# ---------------------------------------------------------------------------------------------- connections
class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (set :attr:`header_timeout` per server).

    The deadline starts when the connection opens and again after each response; it is cleared when a request
    head has arrived. Bytes trickling in do not extend it (uvicorn's keep-alive timer is reset by any byte).
    """

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.header_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        handle = getattr(self, "_deadline", None)
        if handle is not None:
            handle.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before and self.cycle is not None:  # a complete request head arrived
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


def protocol_with_deadline(header_timeout: float) -> type[DeadlineH11Protocol]:
    """A :class:`DeadlineH11Protocol` subclass with its own ``header_timeout`` (uvicorn takes a class)."""
    return type("SumiH11Protocol", (DeadlineH11Protocol,), {"header_timeout": float(header_timeout)})


# ---------------------------------------------------------------------------------------------- disconnects
DISCONNECT_KEY = "sumi.disconnected"
"""Scope key of the asyncio.Event :class:`DisconnectWatch` sets when the client goes away."""


class DisconnectWatch:
    """ASGI middleware that notices a client hanging up while its request waits for the model.

    Starlette's ``Request.is_disconnected`` polls the receive channel and misses the disconnect when a
    ``BaseHTTPMiddleware`` sits in between; here one task reads the channel for the whole request, hands the
    messages on through a queue, and sets ``scope["sumi.disconnected"]`` when ``http.disconnect`` arrives.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = asyncio.Event()
        messages: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            while True:
                message = await receive()
                await messages.put(message)
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        task = asyncio.create_task(pump())
        try:
            await self.app({**scope, DISCONNECT_KEY: gone}, messages.get, send)
        finally:
            task.cancel()


def disconnect_check(request) -> Callable[[], Awaitable[bool]]:
    """An async ``() -> bool`` telling whether the client of ``request`` has gone away."""
    gone = request.scope.get(DISCONNECT_KEY)
    if gone is None:
        return request.is_disconnected

    async def check() -> bool:
        return gone.is_set()

    return check

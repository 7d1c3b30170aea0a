"""Registration with the kubelet: one retrying task per resource.

The registrar knows the kubelet (its socket, the Register call, when it is
there) and nothing about devices. Each resource registers on its own, so one
failing Register (say, a name the kubelet rejects) never holds back the
others, and a missing kubelet means waiting, not a tight retry loop.

Only what a kubelet can cause is retried: gRPC errors, connection and socket
errors, timeouts, HTTP/2 trouble. Anything else is a bug here, which retrying
cannot mend: it is logged once at ERROR with its traceback, the resource stays
pending (``/readyz`` says why), and the next reason to register (the kubelet
restarting, SIGHUP, our socket recreated) tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from smarter_device_manager.api import messages as pb
from smarter_device_manager.api.services import register
from smarter_device_manager.deviceplugin.plugin import OPTIONS
from smarter_device_manager.grpcwire import Channel, RpcError, WireError
from smarter_device_manager.watch import KUBELET_SOCKET

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
REGISTER_TIMEOUT = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# What talking to a kubelet can fail with: a gRPC status, the connection or HTTP/2 (WireError);
# OSError covers connection errors, a missing socket and (on 3.11+) TimeoutError.
RETRYABLE = (RpcError, WireError, OSError, asyncio.TimeoutError)


@dataclass(slots=True)
class Registration:
    resource_name: str
    endpoint: str
    registered: bool = False
    attempts: int = 0
    last_error: str = ""


class Registrar:
    """Keeps each requested resource registered while the kubelet is up."""

    def __init__(
        self, plugin_dir: str, on_result: Callable[[Registration, bool], None] | None = None
    ) -> None:
        self.kubelet_socket = os.path.join(plugin_dir, KUBELET_SOCKET)
        self.kubelet_up = asyncio.Event()
        if os.path.exists(self.kubelet_socket):
            self.kubelet_up.set()
        self.registrations: dict[str, Registration] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._on_result = on_result
        # One HTTP/2 connection to the kubelet carries every Register: a node
        # with hundreds of devices must not open hundreds of connections at once
        # (the kubelet's listen backlog overflows and connects fail).
        self._channel: Channel | None = None

    def request(self, resource_name: str, endpoint: str) -> None:
        """(Re-)register ``resource_name`` served at ``endpoint`` (a file name)."""
        self.cancel(resource_name)
        registration = Registration(resource_name, endpoint)
        self.registrations[resource_name] = registration
        self._tasks[resource_name] = asyncio.create_task(
            self._keep(registration), name=f"register {resource_name}"
        )

    def cancel(self, resource_name: str) -> None:
        task = self._tasks.pop(resource_name, None)
        if task is not None:
            task.cancel()
        self.registrations.pop(resource_name, None)

    def kubelet_started(self) -> None:
        """``kubelet.sock`` was (re)created: a new kubelet process, so a new connection.

        It forgot every plugin, but re-registering is the caller's call: the
        kubelet deleted our sockets too, and they must be back before it dials.
        """
        self._drop_channel()
        self.kubelet_up.set()

    def kubelet_stopped(self) -> None:
        self._drop_channel()
        self.kubelet_up.clear()
        for registration in self.registrations.values():
            registration.registered = False

    def pending(self) -> list[str]:
        return sorted(n for n, r in self.registrations.items() if not r.registered)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._drop_channel()

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def _keep(self, registration: Registration) -> None:
        delay = BACKOFF_FIRST
        while True:
            if not self.kubelet_up.is_set():
                log.debug("waiting for the kubelet (%s) to register %s",
                         self.kubelet_socket, registration.resource_name)
                await self.kubelet_up.wait()
            registration.attempts += 1
            try:
                await self._register(registration)
            except asyncio.CancelledError:
                raise
            except RETRYABLE as exc:  # the kubelet's doing: log, back off, retry this one only
                if not isinstance(exc, RpcError):  # the connection itself is suspect
                    self._drop_channel()
                registration.last_error = _describe(exc)
                log.warning("registering %s with the kubelet failed (attempt %d): %s; retry in %.1fs",
                            registration.resource_name, registration.attempts,
                            registration.last_error, delay)
                if self._on_result:
                    self._on_result(registration, False)
                await asyncio.sleep(delay * _jitter())
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except Exception as exc:  # a bug: retrying cannot mend it
                registration.last_error = f"internal error: {type(exc).__name__}: {exc}"
                log.exception("registering %s with the kubelet failed with an internal error; "
                              "not retrying until the next reason to register (kubelet restart, "
                              "SIGHUP, socket recreated)", registration.resource_name)
                if self._on_result:
                    self._on_result(registration, False)
                self._tasks.pop(registration.resource_name, None)
                return
            registration.registered = True
            registration.last_error = ""
            log.info("registered %s with the kubelet (endpoint %s)",
                     registration.resource_name, registration.endpoint)
            if self._on_result:
                self._on_result(registration, True)
            self._tasks.pop(registration.resource_name, None)
            return

    async def _register(self, registration: Registration) -> None:
        if self._channel is None:
            self._channel = Channel(self.kubelet_socket)
        request = pb.RegisterRequest(
            version=API_VERSION,
            endpoint=registration.endpoint,
            resource_name=registration.resource_name,
            options=OPTIONS,
        )
        await asyncio.wait_for(register(self._channel, request), REGISTER_TIMEOUT)


def _jitter() -> float:
    """0.8-1.2, so many plugins failing together do not retry in lockstep.

    From os.urandom rather than ``random``, which costs 0.8 MiB to import.
    """
    return 0.8 + os.urandom(1)[0] / 255 * 0.4


def _describe(exc: Exception) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {REGISTER_TIMEOUT:.0f}s"
    message = getattr(exc, "message", None)
    if message:
        return str(message)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

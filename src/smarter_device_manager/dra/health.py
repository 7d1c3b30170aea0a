"""Device health for the kubelet: the DRAResourceHealth service (``NodeWatchResources``).

With ResourceHealthStatus (beta and on in Kubernetes 1.36) the kubelet opens this stream on our
DRA socket after registration and shows each prepared device's health in the pod's
``status.containerStatuses[].allocatedResourcesStatus``. What we report:

* **Healthy**: the device is on the node (the last rescan found it);
* **Unhealthy**, message ``unplugged 12 s ago; ...``: it is in its removal grace
  (``unplugged.py``); after the grace it is no longer reported, and the kubelet shows Unknown.

When: the complete list on open (the kubelet reconciles each message as the whole state), again
at once on every change, and again every ``RESEND`` seconds. The kubelet stamps a report on
arrival and calls a device Unknown when it hears nothing for its timeout (30 s unless the device
says otherwise), so the re-send keeps a quiet node's devices Healthy and also keeps "N s ago"
current. A stopped daemon ends the stream; the kubelet then clears our devices to Unknown at once.

One handler answers under both service names, ``v1alpha1.DRAResourceHealth`` (what 1.36 calls)
and ``v1.DRAResourceHealth`` (1.37 prefers it when GetInfo lists it); the messages are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping

from grpclib.server import Stream

from smarter_device_manager.api import dra as pb
from smarter_device_manager.dra.kube import within
from smarter_device_manager.dra.unplugged import Gone

log = logging.getLogger(__name__)

RESEND = 10.0
TIMEOUT = 30  # what each device tells the kubelet; three re-sends fit in it


def report(pool: str, present: Iterable[str], gone: Mapping[str, Gone], grace: float,
           now: float) -> pb.NodeWatchResourcesResponse:
    """Every device's health at ``now`` (Unix seconds), sorted by name."""
    devices = []
    for name in sorted(set(present) | set(gone)):
        identifier = pb.DeviceIdentifier(pool_name=pool, device_name=name)
        if name in gone and name not in present:
            ago = max(0, int(now - gone[name].since))
            left = max(0, int(gone[name].since + grace - now))
            devices.append(pb.DeviceHealth(
                device=identifier, health=pb.UNHEALTHY, last_updated_time=int(now),
                health_check_timeout_seconds=TIMEOUT,
                message=f"unplugged {ago} s ago; leaves the node's ResourceSlice in {left} s unless it "
                        "comes back"))
        else:
            devices.append(pb.DeviceHealth(device=identifier, health=pb.HEALTHY, last_updated_time=int(now),
                                           health_check_timeout_seconds=TIMEOUT))
    return pb.NodeWatchResourcesResponse(devices=devices)


class HealthService(pb.DRAResourceHealthService):
    """Streams ``current()`` to every kubelet that watches; ``changed()`` sends it at once."""

    __slots__ = ("_changed", "current", "resend", "streams")

    def __init__(self, current: Callable[[], pb.NodeWatchResourcesResponse], resend: float = RESEND) -> None:
        self.current = current
        self.resend = resend
        self.streams = 0
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake every open stream (each waits on the event it saw last; a new one is armed)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def NodeWatchResources(
            self, stream: Stream[pb.NodeWatchResourcesRequest, pb.NodeWatchResourcesResponse]) -> None:
        await stream.recv_message()
        self.streams += 1
        log.info("the kubelet watches device health (%d stream(s))", self.streams)
        try:
            while True:
                event = self._changed
                await stream.send_message(self.current())
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(event.wait(), self.resend)
        finally:
            self.streams -= 1
            log.info("a device health stream ended (%d left)", self.streams)

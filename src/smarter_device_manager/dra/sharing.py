"""Who may hold a device at once: the driver's own check of the scheduler's allocations.

The scheduler decides; this only refuses what it should never have decided, as defence in depth
(a force-deleted pod whose containers still run, a bug, a second scheduler). Facts (Kubernetes
1.36.2, KEP-5018 and pkg/kubelet/kubelet.go):

* **adminAccess** (``DeviceRequest.adminAccess``, only in namespaces labelled
  ``resource.kubernetes.io/admin-access: "true"``): the scheduler gives such a request a device
  even if other claims hold it, and the admin claim does not count as holding it. The allocation
  result says ``adminAccess: true``. So an admin claim is prepared whatever else holds the
  device, and never counts against anybody.
* Other claims hold shares: a device published with ``nummaxdevices`` N > 1 has a consumable
  capacity ``shares`` of N and each claim's result says how many it took
  (``consumedCapacity.shares``, 1 by default); a plain device (N = 1) is one share.
* The kubelet unprepares a pod's claims after its containers stopped and *before* it reports the
  pod finished, so by the time the claim can be deallocated and the device given to another
  claim, the first is no longer prepared here: a second normal claim finding the device full
  on this node is a real conflict, and refusing it keeps the device out of two workloads. The
  kubelet retries the prepare; it succeeds once the first claim is unprepared.

Checkpoint entries written before this check existed carry no ``admin`` key: they are not
counted (they may be admin claims the old daemon did not tell apart), so an upgrade never
refuses a claim because of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SHARES = "shares"
_INT = re.compile(r"^[0-9]+$")


def is_admin(result: Mapping[str, Any]) -> bool:
    return result.get("adminAccess") is True


def consumed_shares(result: Mapping[str, Any]) -> int:
    """The shares one allocation result takes (``consumedCapacity.shares``; whole numbers only,
    which is all our ``validRange`` with step 1 allows; 1 when absent)."""
    value = str(((result.get("consumedCapacity") or {}).get(SHARES)) or "1")
    return int(value) if _INT.match(value) else 1


def held_shares(claims: Mapping[str, Mapping[str, Any]], device: str, but: str = "") -> int:
    """Shares of ``device`` held by normal (not admin) claims in the checkpoint, except ``but``."""
    total = 0
    for uid, claim in claims.items():
        if uid == but:
            continue
        for entry in claim.get("devices") or ():
            if entry.get("device") == device and entry.get("admin") is False:
                total += int(entry.get("shares", 1))
    return total


def conflict(claims: Mapping[str, Mapping[str, Any]], device: str, capacity: int, wanted: int,
             uid: str) -> str | None:
    """Why a normal claim cannot take ``wanted`` of ``capacity`` shares now, or None."""
    held = held_shares(claims, device, but=uid)
    if held + wanted <= capacity:
        return None
    holders = sorted(f"{c.get('namespace')}/{c.get('name')}" for u, c in claims.items() if u != uid and any(
        e.get("device") == device and e.get("admin") is False for e in c.get("devices") or ()))
    room = "one claim at a time" if capacity == 1 else f"{capacity} shares, {held} of them taken"
    return (f"device {device} is still prepared on this node for {', '.join(holders)} ({room}); the "
            "scheduler should not have allocated it again before that claim was unprepared (a "
            "force-deleted pod still running?): the kubelet retries once it is released")

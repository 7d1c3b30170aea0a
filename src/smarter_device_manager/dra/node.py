"""The kubelet's DRA node service: NodePrepareResources / NodeUnprepareResources, and the checkpoint.

Prepare, per claim: read the ResourceClaim from the API server (the kubelet sends only its
namespace, name and UID), take the allocation results for our driver and this node's pool, check
each device is still here and still a device node, make sure the CDI specs the runtime will read
are in place, remember the answer in the checkpoint, then answer with CDI device IDs:

* devices whose edits do not depend on the claim use the node-wide spec (kind
  ``<driver>/device``, kept current by the daemon on every rescan): ``<driver>/device=<name>``;
* pool members do depend on it (the k-th member a claim got appears at ``<containerpath>k`` and
  the env lists all of them), so they get a claim-specific spec file (kind ``<driver>/claim``,
  one device ``<claim uid>-<name>`` each), removed again on unprepare.

Two daemons at once (a rolling update, see ``locks.py``): each prepare and unprepare does its
file work under ``claims.lock`` and re-reads the checkpoint under it first, so a claim prepared
by one daemon is known to the other (answered from the checkpoint, or unprepared with its CDI
spec removed). The claim itself is read from the API server outside the lock.

adminAccess and shares: ``sharing.py`` (an admin claim is prepared on a device others hold; a
normal claim is refused if the device is already full on this node).

Idempotence and restarts: a claim already in the checkpoint is answered from it without any API
call, so a kubelet that restarts between prepare and unprepare (and asks again), or a daemon
that restarts with claims prepared, gets the same answer even while the API server is down. The
checkpoint is one JSON file written atomically (temp file, fsync, rename). Unprepare of an
unknown claim succeeds: it is what the kubelet does after a restart to be sure.

Errors are per claim, in the answer's ``error`` field, with a message for the user (it shows in
the pod's events): an unplugged device names the device and says so; the API server unreachable
says so; a claim that the kubelet names with another UID than the server's is refused. Nothing
else is disturbed by one claim's failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from grpclib.server import Stream

from smarter_device_manager import cdi
from smarter_device_manager.api import dra as pb
from smarter_device_manager.discovery import KIND_DIRECTORY, directory_nodes, node_problem
from smarter_device_manager.dra.devices import DraDevice, Paths, claim_cdi_devices, fingerprint_now
from smarter_device_manager.dra.kube import KubeClient, KubeError, path_of
from smarter_device_manager.dra.locks import CLAIMS_WAIT, FileLock, LockTimeout
from smarter_device_manager.dra.sharing import conflict, consumed_shares, is_admin
from smarter_device_manager.dra.slices import API_VERSION
from smarter_device_manager.metrics import Metrics

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.json"
CHECKPOINT_VERSION = 1
CLAIMS = "resourceclaims.resource.k8s.io"


class PrepareError(Exception):
    """A claim that cannot be prepared; the message goes to the kubelet and the pod's events."""


class Checkpoint:
    """Prepared claims by UID, in ``<state dir>/checkpoint.json``."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, CHECKPOINT)
        self.claims: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read the file; a missing one is an empty checkpoint, a damaged one is set aside."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            aside = self.path + ".damaged"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("checkpoint %s is unreadable (%s); moved to %s and starting empty: the kubelet "
                      "prepares its claims again", self.path, exc, aside)
            return
        if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION or \
                not isinstance(doc.get("claims"), dict):
            log.error("checkpoint %s has an unknown format; ignoring it", self.path)
            return
        bad: dict[str, Any] = {}
        for uid, entry in doc["claims"].items():
            problem = entry_problem(entry)
            if problem is None:
                self.claims[uid] = entry
            else:
                bad[uid] = entry
                log.warning("checkpoint %s: claim %s is not usable (%s); set aside in %s, the kubelet "
                            "prepares it again", self.path, uid, problem, self.path + ".damaged")
        if bad:
            self._set_aside(bad)

    def _set_aside(self, bad: dict[str, Any]) -> None:
        """Keep the unusable entries for a human (``<checkpoint>.damaged``), the good ones in the
        checkpoint: one bad entry must not cost the others, nor crash every start."""
        aside = self.path + ".damaged"
        try:
            with open(aside, "w", encoding="utf-8") as handle:
                json.dump({"version": CHECKPOINT_VERSION, "claims": bad}, handle, sort_keys=True)
            self.save()
        except OSError as exc:
            log.error("checkpoint %s: cannot set the unusable claims aside (%s); they stay out of "
                      "memory only", self.path, exc.strerror or exc)

    def reload(self) -> None:
        """Read the file again (under ``claims.lock``): another daemon may have changed it."""
        self.claims = {}
        self.load()

    def save(self) -> None:
        """Write a temp file and rename it over the checkpoint: a daemon that dies at any moment
        leaves the old or the new file, never half of one.

        No fsync, on purpose: it cost 5-15 ms per prepare and as much per unprepare on this VM's
        ext4 (the target is 20 ms), and it only matters for a power loss, after which the node
        reboots, every container is gone and the kubelet prepares its claims afresh anyway.
        """
        data = json.dumps({"version": CHECKPOINT_VERSION, "claims": self.claims}, separators=(",", ":"),
                          sort_keys=True).encode()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


def request_name(result_request: str) -> str:
    """The request name the kubelet matches a container's ``resources.claims[].request`` against.

    An allocation result of a request with ``firstAvailable`` subrequests (prioritized lists,
    GA in Kubernetes 1.36) names ``<request>/<subrequest>``; a container can only name the
    request (a DNS label), and the kubelet compares the two exactly, so a device answered with
    ``<request>/<subrequest>`` would reach no container that names its request. Answer with the
    part before the first '/', as the kubelet's own helper does (dynamic-resource-allocation
    kubeletplugin/draplugin.go stripSubrequestNames).
    """
    return result_request.split("/", 1)[0]


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one checkpoint entry (as ``prepare`` writes it), or None.

    Checked on load because everything after trusts the shape: an entry written by another
    version, or edited by hand, must be refused here rather than raise later in every start.
    """
    if not isinstance(entry, dict):
        return "not an object"
    for key in ("namespace", "name"):
        if not isinstance(entry.get(key), str):
            return f"no string {key!r}"
    devices = entry.get("devices")
    if not isinstance(devices, list):
        return "no list 'devices'"
    for number, device in enumerate(devices):
        if not isinstance(device, dict):
            return f"devices[{number}] is not an object"
        for key in ("pool", "device"):
            if not isinstance(device.get(key), str):
                return f"devices[{number}] has no string {key!r}"
        for key in ("requests", "cdi"):
            if not _strings(device.get(key)):
                return f"devices[{number}] has no list of strings {key!r}"
        if "share" in device and not isinstance(device["share"], str):
            return f"devices[{number}].share is not a string"
        if "admin" in device and not isinstance(device["admin"], bool):
            return f"devices[{number}].admin is not a boolean"
        shares = device.get("shares", 0)
        if isinstance(shares, bool) or not isinstance(shares, int) or shares < 0:
            return f"devices[{number}].shares is not a whole number"
    return None


def cdi_dir_problem(cdi_dir: str) -> str | None:
    """Why no CDI spec can be written to ``cdi_dir``, or None. DRA mode never creates the
    directory (no more than device-plugin mode does): one that the container runtime does not
    read (a typo, a path not mounted from the host) would make every CDI name unresolvable."""
    if os.path.isdir(cdi_dir):
        return None
    return (f"CDI directory {cdi_dir} does not exist: devices cannot be handed to containers; "
            "create it (or mount the host's, where the container runtime reads CDI specs) or fix "
            "--cdi-dir; the daemon does not create it")


def claim_spec_file(driver: str, uid: str) -> str:
    return f"{driver}-claim_{uid}.json"


class NodeService(pb.DRAPluginService):
    """Serves NodePrepareResources/NodeUnprepareResources for one driver on one node."""

    __slots__ = ("_client", "_devices", "_refresh", "cdi_dir", "checkpoint", "driver", "lock", "metrics",
                 "node", "paths", "prefix")

    def __init__(self, driver: str, node: str, client: KubeClient,
                 devices: Callable[[], dict[str, DraDevice]], refresh_spec: Callable[[], None],
                 paths: Paths, prefix: str, cdi_dir: str,
                 checkpoint: Checkpoint, metrics: Metrics, lock: FileLock) -> None:
        self.driver = driver
        self.node = node
        self._client = client
        self._devices = devices
        self._refresh = refresh_spec
        self.paths = paths
        self.prefix = prefix
        self.cdi_dir = cdi_dir
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.lock = lock

    @property
    def device_kind(self) -> str:
        return f"{self.driver}/device"

    @property
    def claim_kind(self) -> str:
        return f"{self.driver}/claim"

    # --- RPCs ----------------------------------------------------------------------------
    async def NodePrepareResources(
            self, stream: Stream[pb.NodePrepareResourcesRequest, pb.NodePrepareResourcesResponse]) -> None:
        request = await stream.recv_message()
        answer = pb.NodePrepareResourcesResponse()
        for claim in request.claims if request is not None else ():
            answer.claims[claim.uid] = await self.prepare(claim)
        await stream.send_message(answer)

    async def NodeUnprepareResources(
            self, stream: Stream[pb.NodeUnprepareResourcesRequest, pb.NodeUnprepareResourcesResponse],
    ) -> None:
        request = await stream.recv_message()
        answer = pb.NodeUnprepareResourcesResponse()
        for claim in request.claims if request is not None else ():
            answer.claims[claim.uid] = await self.unprepare(claim)
        await stream.send_message(answer)

    @contextlib.asynccontextmanager
    async def _locked(self, who: str) -> AsyncIterator[None]:
        """``claims.lock`` held and the checkpoint re-read. The body must not await: it is the
        short file work, and within this process it is then atomic too."""
        try:
            await self.lock.acquire(CLAIMS_WAIT)
        except (LockTimeout, OSError) as exc:
            raise PrepareError(f"{who}: cannot lock the prepared claims ({exc}); another instance of "
                               "the driver on this node holds the lock: the kubelet retries") from None
        try:
            self.checkpoint.reload()
            yield
        finally:
            self.lock.release()

    # --- prepare -------------------------------------------------------------------------
    async def prepare(self, claim: pb.Claim) -> pb.NodePrepareResourceResponse:
        who = f"{claim.namespace}/{claim.name}"
        try:
            async with self._locked(who):
                known = self.checkpoint.claims.get(claim.uid)
                if known is not None:
                    self._restore_claim_spec(claim.uid, known)
            how = "from the checkpoint"
            if known is None:
                obj = await self._read_claim(claim)
                async with self._locked(who):
                    known = self.checkpoint.claims.get(claim.uid)  # the other daemon, meanwhile?
                    if known is not None:
                        self._restore_claim_spec(claim.uid, known)
                    else:
                        known = self._prepare_new(claim, obj)
                        how = "prepared"
            devices = known["devices"]
        except PrepareError as exc:
            self.metrics.inc("dra_prepares_total", result="error")
            log.error("NodePrepareResources %s (uid %s): %s", who, claim.uid, exc)
            return pb.NodePrepareResourceResponse(error=str(exc))
        self.metrics.inc("dra_prepares_total", result="success")
        log.info("NodePrepareResources %s (uid %s) %s: %s", who, claim.uid, how,
                 ", ".join(f"{d['device']} -> {' '.join(d['cdi'])}" for d in devices) or "no devices of ours")
        return pb.NodePrepareResourceResponse(devices=[
            pb.Device(request_names=[request_name(r) for r in d["requests"]], pool_name=d["pool"],
                      device_name=d["device"],
                      cdi_device_ids=list(d["cdi"]), share_id=d.get("share")) for d in devices])

    async def _read_claim(self, claim: pb.Claim) -> dict[str, Any]:
        who = f"ResourceClaim {claim.namespace}/{claim.name}"
        try:
            obj = await self._client.request(
                "GET", path_of(API_VERSION, "resourceclaims", claim.name, claim.namespace),
                verb="get", resource=CLAIMS)
        except KubeError as exc:
            self.metrics.inc("dra_api_errors_total", verb="get", code=str(exc.status))
            raise PrepareError(f"cannot read {who}: {exc}") from None
        return obj if isinstance(obj, dict) else {}

    def _prepare_new(self, claim: pb.Claim, obj: dict[str, Any]) -> dict[str, Any]:
        """Check, write the claim's CDI spec and the checkpoint (under the lock); the new entry."""
        who = f"ResourceClaim {claim.namespace}/{claim.name}"
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        if uid != claim.uid:
            raise PrepareError(f"{who} has UID {uid or '(none)'}, the kubelet asked for {claim.uid}: "
                               "the claim was deleted and made again; the kubelet will retry")
        results = ((((obj.get("status") or {}).get("allocation") or {}).get("devices") or {})
                   .get("results") or [])
        ours = [r for r in results if isinstance(r, dict) and r.get("driver") == self.driver]
        if not ours:
            raise PrepareError(f"{who} has no allocated device of driver {self.driver}")
        current = self._devices()
        wanted: list[tuple[dict[str, Any], DraDevice]] = []
        for result in ours:
            name, pool = str(result.get("device", "")), str(result.get("pool", ""))
            if pool != self.node:
                raise PrepareError(f"{who}: device {name} is allocated from pool {pool}, but this is "
                                   f"node {self.node}")
            device = current.get(name)
            if device is None:
                raise PrepareError(f"{who}: device {name} is no longer on node {self.node} (unplugged, or "
                                   "its rule was removed); delete the pod so the claim can be allocated "
                                   "again")
            self._check_nodes(who, device)
            wanted.append((result, device))
        taking: dict[str, int] = {}
        for result, device in wanted:
            if not is_admin(result):
                taking[device.name] = taking.get(device.name, 0) + consumed_shares(result)
        for name, shares in sorted(taking.items()):
            problem = conflict(self.checkpoint.claims, name, current[name].shares, shares, claim.uid)
            if problem:
                raise PrepareError(f"{who}: {problem}")
        problem = cdi_dir_problem(self.cdi_dir)
        if problem is not None:
            raise PrepareError(f"{who}: {problem}")
        if any(d.resource.kind == KIND_DIRECTORY for _, d in wanted) or (
                any(d.member is None for _, d in wanted) and not os.path.exists(
                    os.path.join(self.cdi_dir, cdi.spec_file_name(self.device_kind)))):
            # the node-wide spec lists a directory's nodes as they are now; and it must be
            # there at all (the CDI dir may have come after the last rescan, or been cleaned)
            self._refresh()
        members = [d for _, d in wanted if d.member is not None]
        claim_devices = claim_cdi_devices(members, self.paths, self.prefix, claim.uid) if members else {}
        if claim_devices:
            try:
                spec = cdi.build_spec(self.claim_kind, claim_devices.values())
                cdi.write_spec(self.cdi_dir, claim_spec_file(self.driver, claim.uid), spec)
            except (cdi.CdiError, OSError) as exc:
                raise PrepareError(f"{who}: cannot write its CDI spec: {exc}") from None
        prepared = []
        for result, device in wanted:
            if device.name in claim_devices:
                cdi_id = cdi.qualified(self.claim_kind, claim_devices[device.name].name)
            else:
                cdi_id = cdi.qualified(self.device_kind, device.name)
            entry: dict[str, Any] = {"requests": [request_name(str(result.get("request", "")))],
                                     "pool": self.node, "device": device.name, "cdi": [cdi_id],
                                     "admin": is_admin(result), "shares": consumed_shares(result)}
            if result.get("shareID"):
                entry["share"] = str(result["shareID"])
            prepared.append(entry)
        known = {"namespace": claim.namespace, "name": claim.name, "devices": prepared}
        self.checkpoint.claims[claim.uid] = known
        try:
            self.checkpoint.save()
        except OSError as exc:
            del self.checkpoint.claims[claim.uid]
            raise PrepareError(f"{who}: cannot write the checkpoint {self.checkpoint.path}: "
                               f"{exc.strerror}") from None
        return known

    def _check_nodes(self, who: str, device: DraDevice) -> None:
        """Every node must still be a device node inside the dev dir: it may have gone or been
        replaced since the scan, or a directory on its way swapped for a symlink to somewhere
        else. The same descriptor walk as device-plugin mode's Allocate (discovery.node_problem,
        discovery.directory_nodes; docs/decisions.md "Allocate checks containment with
        descriptors"), so a swap is refused, never followed out of the dev dir."""
        nodes = device.nodes
        if device.resource.kind == KIND_DIRECTORY:
            nodes, problems = directory_nodes(self.paths.dev_dir, device.resource.path)
            for problem in problems:
                log.warning("%s: device %s: %s", who, device.name, problem)
            if not nodes:
                why = "; ".join(problems) or f"{device.where} holds no device nodes any more"
                raise PrepareError(f"{who}: device {device.name}: {why}")
        for node in nodes:
            refused = node_problem(self.paths.dev_dir, node.source)
            if refused is not None:
                raise PrepareError(f"{who}: device {device.name}: {refused}")
        if device.fingerprint and nodes:
            # The last scan may be older than a re-enumeration: the node may be another device now.
            now = fingerprint_now(self.paths.dev_dir, self.paths.sys_dir, nodes[0])
            if now != device.fingerprint:
                raise PrepareError(f"{who}: device {device.name} was allocated as {device.fingerprint}, "
                                   f"but /dev/{nodes[0].source} is now "
                                   f"{now or 'no device sysfs knows'}; refused. Delete the pod so "
                                   "the claim can be allocated again")

    def _restore_claim_spec(self, uid: str, known: dict[str, Any]) -> None:
        """A prepared claim asked again: its claim spec must still be there (someone may have
        cleaned the CDI dir); rebuild it from the devices as they are now if it is not."""
        if not any(cdi_id.startswith(self.claim_kind + "=") for d in known["devices"] for cdi_id in d["cdi"]):
            return
        if cdi.read_spec(self.cdi_dir, claim_spec_file(self.driver, uid)) is not None:
            return
        current = self._devices()
        members = [current[d["device"]] for d in known["devices"] if d["device"] in current]
        members = [m for m in members if m.member is not None]
        if not members:
            raise PrepareError(f"claim {known['namespace']}/{known['name']}: its CDI spec is gone and its "
                               "devices are no longer on this node")
        devices = claim_cdi_devices(members, self.paths, self.prefix, uid)
        try:
            cdi.write_spec(self.cdi_dir, claim_spec_file(self.driver, uid),
                           cdi.build_spec(self.claim_kind, devices.values()))
        except (cdi.CdiError, OSError) as exc:
            raise PrepareError(f"claim {known['namespace']}/{known['name']}: cannot write its CDI spec: "
                               f"{exc}") from None

    # --- unprepare -----------------------------------------------------------------------
    async def unprepare(self, claim: pb.Claim) -> pb.NodeUnprepareResourceResponse:
        who = f"{claim.namespace}/{claim.name}"
        known = None
        try:
            async with self._locked(who):
                known = self.checkpoint.claims.pop(claim.uid, None)
                try:
                    cdi.remove_spec(self.cdi_dir, claim_spec_file(self.driver, claim.uid))
                    if known is not None:
                        self.checkpoint.save()
                except OSError as exc:
                    if known is not None:
                        self.checkpoint.claims[claim.uid] = known
                    raise PrepareError(f"cannot clean up claim {who}: {exc.strerror or exc}") from None
        except PrepareError as exc:
            self.metrics.inc("dra_unprepares_total", result="error")
            message = str(exc)
            log.error("NodeUnprepareResources %s", message)
            return pb.NodeUnprepareResourceResponse(error=message)
        self.metrics.inc("dra_unprepares_total", result="success")
        log.info("NodeUnprepareResources %s (uid %s)%s", who, claim.uid,
                 "" if known is not None else ": was not prepared here (nothing to do)")
        return pb.NodeUnprepareResourceResponse()

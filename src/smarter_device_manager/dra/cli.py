"""The ``dra`` subcommand: its options and how it starts DRA mode.

Only ``smarter-device-manager dra`` imports this module (``cli.build_parser`` adds a mode's
subcommands only when they are asked for), so device-plugin mode never loads DRA mode's code, its
API client or ``ssl`` (a test checks ``sys.modules`` after ``serve`` starts); and this module is
only argparse definitions until ``run`` is called. Every option also comes from an ``SDM_*``
environment variable, checked by the flag's own function (``options.Parser.add_env_option``): a
bad value from the environment fails exactly like a bad flag (exit 2, naming the option and the
variable).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from smarter_device_manager.naming import SOCKET_PATH_MAX
from smarter_device_manager.options import (
    config_watch_dir,
    daemon_options,
    discovery_options,
    load_or_exit,
    parse_duration,
    resolve_config,
)

DEFAULT_DRIVER = "smarter-devices.io"
DEFAULT_PLUGINS_DIR = "/var/lib/kubelet/plugins"
DEFAULT_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
DEFAULT_CDI_DIR = "/var/run/cdi"
DEFAULT_REMOVAL_GRACE = "300"
TAINT_EFFECTS = ("NoSchedule", "NoExecute")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _subdomain(text: str, what: str, limit: int) -> str | None:
    if not text:
        return f"{what} is empty"
    if len(text) > limit:
        return f"{what} {text!r} is longer than {limit} characters"
    if not all(_DNS_LABEL.match(part) for part in text.split(".")):
        return f"{what} {text!r} is not a DNS subdomain (lowercase letters, digits, '-', '.')"
    return None


def driver_name(text: str) -> str:
    """A DRA driver name: a DNS subdomain of at most 63 characters that is also a CDI vendor."""
    problem = _subdomain(text, "driver name", 63)
    if problem is None and "." not in text:
        problem = f"driver name {text!r} should be a domain you own, e.g. smarter-devices.io"
    if problem is None and not text[0].isalpha():
        problem = f"driver name {text!r} must start with a letter (it is also the CDI vendor)"
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def node_name(text: str) -> str:
    problem = _subdomain(text, "node name", 253)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


_POD_UID = re.compile(r"^[0-9a-z]([0-9a-z-]{0,34}[0-9a-z])?$")


def pod_uid(text: str) -> str:
    """This pod's UID (downward API ``metadata.uid``), a part of our socket names: lowercase
    letters, digits and '-', at most 36 characters (a UUID). Empty: the fixed names of old."""
    if text and not _POD_UID.match(text):
        raise argparse.ArgumentTypeError(
            f"pod UID {text!r} is not a pod UID (a UUID like 6f1c1d7e-0b1f-4c35-9f55-3b0f1f0c2a9e: "
            "lowercase letters, digits and '-', at most 36 characters); the chart sets it from the "
            "pod's metadata.uid")
    return text


def absolute_dir(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an absolute path")
    return text.rstrip("/") or "/"


def removal_grace(text: str) -> float:
    """A duration of at most a day: a device kept longer would hold its claims' pods for nothing."""
    seconds = parse_duration(text)
    if seconds > 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is more than a day; an unplugged device would stay "
                                         "in the slice (tainted) that long")
    return seconds


def taint_effect(text: str) -> str:
    """NoSchedule or NoExecute, in the API's spelling (case-insensitive here)."""
    for effect in TAINT_EFFECTS:
        if text.lower() == effect.lower():
            return effect
    raise argparse.ArgumentTypeError(f"invalid taint effect: {text!r} (choose from "
                                     f"{', '.join(TAINT_EFFECTS)}; NoExecute also evicts the pods that "
                                     "hold an unplugged device)")


def add_parser(sub: Any) -> Any:
    """The ``dra`` subcommand's parser (an ``options.Parser``: every option also from its
    variable, checked by the same function as the flag)."""
    dra = sub.add_parser("dra", help="run as a Dynamic Resource Allocation (resource.k8s.io/v1) driver")
    discovery_options(dra)
    dra.add_env_option("--host-dev-dir", absolute_dir, None, metavar="DIR",
                       help="where --dev-dir is on the node, if mounted elsewhere (default: same as "
                       "--dev-dir)")
    dra.add_env_option("--driver-name", driver_name, DEFAULT_DRIVER, metavar="NAME",
                       help=f"DRA driver name and CDI vendor (default {DEFAULT_DRIVER})")
    dra.add_env_option("--node-name", node_name, None, metavar="NAME",
                       help="this node's name (the chart sets it from spec.nodeName)")
    dra.add_env_option("--kubeconfig", _path, None, metavar="PATH",
                       help="kubeconfig to reach the API server (default: the pod's ServiceAccount)")
    dra.add_env_option("--kubelet-plugins-dir", absolute_dir, DEFAULT_PLUGINS_DIR, metavar="DIR",
                       help=f"the kubelet's plugins dir; our socket goes in <dir>/<driver>/ (default "
                       f"{DEFAULT_PLUGINS_DIR})")
    dra.add_env_option("--kubelet-registry-dir", absolute_dir, DEFAULT_REGISTRY_DIR, metavar="DIR",
                       help=f"the kubelet's plugin watcher dir (default {DEFAULT_REGISTRY_DIR})")
    dra.add_env_option("--cdi-dir", absolute_dir, DEFAULT_CDI_DIR, metavar="DIR",
                       help=f"where CDI specs are written (default {DEFAULT_CDI_DIR})")
    dra.add_env_option("--state-dir", absolute_dir, None, metavar="DIR",
                       help="where the checkpoint of prepared claims is kept (default "
                       "<kubelet-plugins-dir>/<driver>)")
    dra.add_env_option("--removal-grace", removal_grace, DEFAULT_REMOVAL_GRACE, metavar="DURATION",
                       help="how long an unplugged device stays in the slice, tainted and Unhealthy, "
                       f"in case it comes back, e.g. 300, 5m; 0 drops it at once (default "
                       f"{DEFAULT_REMOVAL_GRACE} s)")
    dra.add_env_option("--unplugged-taint-effect", taint_effect, "NoSchedule",
                       metavar="{NoSchedule,NoExecute}",
                       help="the effect of the taint on an unplugged device: NoSchedule keeps new "
                       "claims off it; NoExecute also has the pods holding it evicted (default "
                       "NoSchedule)")
    dra.add_env_option("--pod-uid", pod_uid, "", metavar="UID",
                       help="this pod's UID (the chart sets it from metadata.uid): names our sockets "
                       "<driver>-<uid>-reg.sock and dra-<uid>.sock so that a new pod can run beside the "
                       "old one during a rolling update (kubelet 1.33+); default: the fixed names "
                       "<driver>-reg.sock and dra.sock")
    daemon_options(dra)
    return dra


def _path(text: str) -> str | None:
    """Read (and its problems told: missing, not a kubeconfig) when DRA mode starts."""
    return text or None


def run(args: argparse.Namespace) -> int:
    """Start DRA mode; 2 for usage and config errors, 1 when it cannot start."""
    import asyncio
    import logging

    from smarter_device_manager import logs

    logs.setup(args.log_level, args.log_format)
    log = logging.getLogger("smarter_device_manager")
    if not args.node_name:
        log.error("not starting: DRA mode needs this node's name: --node-name or SDM_NODE_NAME (the chart "
                  "sets it from the pod's spec.nodeName)")
        return 2
    from smarter_device_manager.dra import kube
    from smarter_device_manager.dra.daemon import DraDaemon, DraSettings

    try:
        cluster = kube.load_kubeconfig(args.kubeconfig) if args.kubeconfig else kube.in_cluster()
    except kube.ConfigError as exc:
        log.error("not starting: %s", exc)
        return 2
    path, why = resolve_config(args.config)
    if path is None:
        log.info("using the embedded default config (%s)", why)
    config = load_or_exit(path)
    if config is None:
        log.error("not starting: the config is invalid (see above)")
        return 2
    if not os.path.isdir(args.dev_dir):
        log.error("not starting: dev dir %s is not a directory", args.dev_dir)
        return 2
    http = args.http_address
    settings = DraSettings(
        config_path=path,
        config_watch_dir=config_watch_dir(path),
        dev_dir=args.dev_dir,
        host_dev_dir=args.host_dev_dir or args.dev_dir,
        sys_dir=args.sys_dir,
        prefix=args.resource_prefix,
        pass_device_specs=args.pass_device_specs,
        driver=args.driver_name,
        node=args.node_name,
        plugins_dir=args.kubelet_plugins_dir,
        registry_dir=args.kubelet_registry_dir,
        cdi_dir=args.cdi_dir,
        state_dir=args.state_dir or os.path.join(args.kubelet_plugins_dir, args.driver_name),
        http_host=http[0] if http else None,
        http_port=http[1] if http else 0,
        removal_grace=args.removal_grace,
        unplugged_taint_effect=args.unplugged_taint_effect,
        pod_uid=args.pod_uid,
    )

    for sock, where in ((settings.registration_socket, "--kubelet-registry-dir, --driver-name, --pod-uid"),
                        (settings.endpoint, "--kubelet-plugins-dir, --driver-name, --pod-uid")):
        if len(sock.encode()) > SOCKET_PATH_MAX:
            log.error("not starting: the socket path %s is %d bytes, longer than a unix socket path may "
                      "be (%d); shorten %s", sock, len(sock.encode()), SOCKET_PATH_MAX, where)
            return 2

    async def main() -> int:
        return await DraDaemon(settings, config, cluster).run()

    try:
        return asyncio.run(main())
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("not starting: %s%s", where, exc.strerror or exc)
        return 1
    finally:
        sys.stdout.flush()

"""The ``dra-classes`` subcommand: the one-replica controller that keeps a DeviceClass per
extended resource name (``classes.py`` says why and how).

A module of its own rather than more of ``dra/cli.py``: the node daemon and the controller share
only the option checks, and the controller needs none of the node's (dev dir, sysfs, kubelet
sockets, rules). Like ``dra/cli.py`` it is only argparse definitions until ``run``; every option
also comes from its ``SDM_*`` variable, checked by the flag's own function.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from smarter_device_manager.dra.cli import DEFAULT_DRIVER, _path, driver_name
from smarter_device_manager.naming import DEFAULT_PREFIX
from smarter_device_manager.options import daemon_options, parse_duration, prefix

DEFAULT_GRACE = "300"


def grace(text: str) -> float:
    seconds = parse_duration(text)
    if seconds > 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is more than a week; a class of a resource that "
                                         "left the fleet would linger that long")
    return seconds


def add_parser(sub: Any) -> Any:
    parser = sub.add_parser(
        "dra-classes", help="keep a DeviceClass per extended resource name, so pods asking for "
        "smarter-devices/<name> in resources.limits run on DRA nodes (one replica per cluster)")
    parser.add_env_option("--driver-name", driver_name, DEFAULT_DRIVER, metavar="NAME",
                          help=f"the DRA driver whose ResourceSlices to read (default {DEFAULT_DRIVER})")
    parser.add_env_option("--resource-prefix", prefix, DEFAULT_PREFIX, metavar="NAME",
                          help=f"the node daemons' resource prefix; classes map <prefix>/<name> "
                          f"(default {DEFAULT_PREFIX})")
    parser.add_env_option("--grace", grace, DEFAULT_GRACE, metavar="DURATION",
                          help="how long a class outlives the last device of its resource, e.g. "
                          f"300, 5m (default {DEFAULT_GRACE} s)")
    parser.add_env_option("--kubeconfig", _path, None, metavar="PATH",
                          help="kubeconfig to reach the API server (default: the pod's ServiceAccount)")
    daemon_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the controller until SIGTERM; 2 for usage errors, 1 when it cannot start."""
    import asyncio
    import logging

    from smarter_device_manager import logs

    logs.setup(args.log_level, args.log_format)
    log = logging.getLogger("smarter_device_manager")
    from smarter_device_manager.dra import kube

    try:
        cluster = kube.load_kubeconfig(args.kubeconfig) if args.kubeconfig else kube.in_cluster()
    except kube.ConfigError as exc:
        log.error("not starting: %s", exc)
        return 2
    try:
        return asyncio.run(_main(args, cluster))
    except OSError as exc:
        log.error("not starting: %s", exc.strerror or exc)
        return 1
    finally:
        sys.stdout.flush()


async def _main(args: argparse.Namespace, cluster: Any) -> int:
    import asyncio
    import logging
    import signal

    from smarter_device_manager import __version__
    from smarter_device_manager.dra.classes import FAMILIES, ClassController
    from smarter_device_manager.dra.kube import KubeClient
    from smarter_device_manager.http import HttpServer
    from smarter_device_manager.metrics import Metrics

    log = logging.getLogger("smarter_device_manager")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics(FAMILIES)
    metrics.inc("build_info", version=__version__)
    client = KubeClient(cluster)
    controller = ClassController(client, args.driver_name, args.resource_prefix, args.grace, metrics)

    def readyz() -> tuple[int, str, str]:
        reasons = controller.ready
        if reasons:
            return 503, "text/plain", "not ready:\n" + "".join(f"- {r}\n" for r in reasons)
        return 200, "text/plain", f"ready: {len(controller.resources)} extended resources\n"

    http = None
    if args.http_address:
        http = HttpServer({"/healthz": lambda: (200, "text/plain", "ok\n"), "/readyz": readyz,
                           "/metrics": lambda: (200, "text/plain; version=0.0.4", metrics.render())})
        await http.start(*args.http_address)
        log.info("HTTP listener on %s:%d (/healthz /readyz /metrics)", args.http_address[0] or "*",
                 http.port)
    log.info("smarter-device-manager %s dra-classes: driver %s, prefix %s, grace %g s, API server %s (%s)",
             __version__, args.driver_name, args.resource_prefix, args.grace, cluster.url, cluster.source)
    task = asyncio.create_task(controller.run(), name="dra-classes")
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()
    if http is not None:
        await http.stop()
    log.info("stopped")
    return 0

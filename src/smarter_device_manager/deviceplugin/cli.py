"""Device-plugin mode's subcommands: ``serve`` (the daemon) and ``cdi`` (its CDI spec for
runtimes outside Kubernetes).

Only argparse definitions until a command runs: ``cli`` imports this module to build the parser,
and the daemon's modules load only in :func:`serve`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from smarter_device_manager.options import (
    EXIT_USAGE,
    Parser,
    absolute,
    cdi_options,
    config_watch_dir,
    daemon_options,
    discovery_options,
    load_or_exit,
    parse_duration,
    resolve_config,
)

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_REMOVAL_GRACE = 300.0


def add_serve_parser(sub: Any) -> Parser:
    serve: Parser = sub.add_parser("serve", help="run the device plugin (the default)")
    discovery_options(serve)
    serve.add_env_option("--host-dev-dir", absolute("host dev dir"), None, metavar="DIR",
                         help="where --dev-dir is on the node, if mounted elsewhere "
                         "(default: same as --dev-dir)")
    serve.add_env_option("--plugin-dir", _plugin_dir, DEFAULT_PLUGIN_DIR, metavar="DIR",
                         help=f"kubelet device plugin dir (default {DEFAULT_PLUGIN_DIR})")
    daemon_options(serve)
    serve.add_env_option("--removal-grace", parse_duration, DEFAULT_REMOVAL_GRACE,
                         metavar="DURATION",
                         help="how long a vanished device stays advertised as Unhealthy before "
                         "it is withdrawn (default 300s)")
    serve.add_env_option("--state-dir", _state_dir, None, metavar="DIR",
                         help="where the daemon keeps what must outlive it (pool ID pins) "
                         "(default <plugin-dir>/smarter-device-manager)")
    cdi_options(serve, switch=True)
    return serve


def add_cdi_parser(sub: Any) -> Parser:
    cdi: Parser = sub.add_parser("cdi", help="print (or write, or remove) the CDI spec of this node's "
                                 "devices, for podman/docker --device smarter-devices.io/device=NAME")
    discovery_options(cdi)
    cdi_options(cdi, switch=False)
    cdi.add_env_option("--host-dev-dir", absolute("host dev dir"), None, metavar="DIR",
                       help="where --dev-dir is on the host, if mounted elsewhere (default: same as "
                       "--dev-dir)")
    action = cdi.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true",
                        help="write it into --cdi-dir (atomically) instead of printing it")
    action.add_argument("--remove", action="store_true",
                        help="remove our spec file from --cdi-dir (after uninstalling)")
    return cdi


def _plugin_dir(text: str) -> str:
    path = absolute("plugin dir")(text)
    if path is None:
        raise argparse.ArgumentTypeError("plugin dir must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"plugin dir {path!r} is not a directory")
    return path


def _state_dir(text: str) -> str:
    path = absolute("state dir")(text)
    if path is None:
        raise argparse.ArgumentTypeError("state dir must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"state dir {path!r} is not a directory")
    return path


def cdi(args: argparse.Namespace) -> int:
    """The spec ``serve --cdi on`` would write, for runtimes outside Kubernetes (Podman)."""
    import json

    from smarter_device_manager.deviceplugin.cdisync import CdiKeeper
    from smarter_device_manager.discovery import discover

    keeper = CdiKeeper(_cdi_settings(args), daemon=False)
    if args.remove:
        try:
            removed = keeper.remove()
        except OSError as exc:
            print(f"error: cannot remove {keeper.path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"removed {keeper.path}" if removed else f"nothing to remove: {keeper.path} does not exist")
        return 0
    config = load_or_exit(resolve_config(args.config)[0])
    if config is None:
        return EXIT_USAGE
    inventory = discover(args.dev_dir, config, args.resource_prefix, args.sys_dir,
                         args.pass_device_specs)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not args.write:
        devices, problems = keeper.wanted(inventory)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        if not devices:
            print("error: no device to put in a CDI spec", file=sys.stderr)
            return 1
        print(json.dumps(keeper.spec(devices), indent=2))
        return 0
    keeper.sync(inventory)
    for problem in keeper.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if keeper.error is not None:
        print(f"error: {keeper.error}", file=sys.stderr)
        return 1
    names = sorted(keeper.device_names())
    if not names:
        # The keeper removed any old file: it would name devices that are not here.
        print(f"error: no device to put in a CDI spec; {keeper.path} not written", file=sys.stderr)
        return 1
    print(f"wrote {keeper.path}: {len(names)} device{'s' if len(names) != 1 else ''}: "
          + " ".join(f"{args.cdi_kind}={n}" for n in names))
    return 0


def _cdi_settings(args: argparse.Namespace) -> Any:
    from smarter_device_manager.deviceplugin.cdisync import CdiSettings  # only paid for with --cdi on

    return CdiSettings(args.cdi_dir, args.cdi_kind, args.resource_prefix, args.dev_dir,
                       args.host_dev_dir or args.dev_dir)


def serve(args: argparse.Namespace) -> int:
    # Keep ssl out before asyncio is imported: asyncio would map libssl and
    # libcrypto (4.5 MiB RSS) for unix sockets that never use TLS.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio
    import logging

    from smarter_device_manager import logs

    logs.setup(args.log_level, args.log_format)
    from smarter_device_manager.deviceplugin.daemon import Daemon, Settings

    log = logging.getLogger("smarter_device_manager")
    # Resolved once: whether the default file exists must not change between the decision
    # and the read (a daemon told "embedded" while reading the file, or the reverse).
    path, why = resolve_config(args.config)
    if path is None:
        log.info("using the embedded default config (%s)", why)
    config = load_or_exit(path)
    if config is None:
        log.error("not starting: the config is invalid (see above); check it with "
                  "'smarter-device-manager check-config PATH'")
        return EXIT_USAGE
    http = args.http_address
    settings = Settings(
        config_path=path,
        config_watch_dir=config_watch_dir(path),
        dev_dir=args.dev_dir,
        host_dev_dir=args.host_dev_dir or args.dev_dir,
        plugin_dir=args.plugin_dir,
        prefix=args.resource_prefix,
        removal_grace=args.removal_grace,
        sys_dir=args.sys_dir,
        pass_device_specs=args.pass_device_specs,
        cdi=_cdi_settings(args) if args.cdi == "on" else None,
        http_host=http[0] if http else None,
        http_port=http[1] if http else 0,
        state_dir=args.state_dir,
    )

    async def run() -> int:
        return await Daemon(settings, config).run()

    try:
        return asyncio.run(run())
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("not starting: %s%s", where, exc.strerror or exc)
        return 1

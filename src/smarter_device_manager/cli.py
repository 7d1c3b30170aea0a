"""Command line: ``serve`` (the default), ``list`` and ``check-config``.

Every ``serve`` option can also come from an environment variable
``SDM_<OPTION>`` so a DaemonSet can set it without rewriting args. ``list``
and ``check-config`` reuse config and discovery unchanged: what ``list``
prints is what ``serve`` advertises.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from smarter_device_manager import __version__
from smarter_device_manager.config import DEFAULT_PATH as DEFAULT_CONFIG
from smarter_device_manager.naming import DEFAULT_PREFIX, prefix_problem

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_REMOVAL_GRACE = 300.0
EXIT_USAGE = 2


class _Formatter(argparse.HelpFormatter):
    """A fixed width: the default asks shutil for the terminal size, and importing
    shutil (with bz2, lzma, fnmatch) costs the daemon 0.5 MiB of RSS."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def _env(option: str, default: Any = None) -> Any:
    return os.environ.get("SDM_" + option.upper().replace("-", "_"), default)


def parse_duration(text: str) -> float:
    """``300``, ``300s``, ``5m``, ``1h`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use seconds (300) or 300s, 5m, 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``:PORT``; empty means the listener is off."""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:8080 or :8080)")
    return host.strip("[]"), int(port)


def _prefix(text: str) -> str:
    problem = prefix_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"resource prefix {text!r} is not valid: {problem}")
    return text


def _discovery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=_env("config"),
                        help=f"rules file (default {DEFAULT_CONFIG}, or the embedded default "
                        "config when that file does not exist) [SDM_CONFIG]")
    parser.add_argument("--dev-dir", default=_env("dev-dir", "/dev"),
                        help="where to look for devices (default /dev) [SDM_DEV_DIR]")
    parser.add_argument("--resource-prefix", type=_prefix,
                        default=_env("resource-prefix", DEFAULT_PREFIX),
                        help=f"resource name domain (default {DEFAULT_PREFIX}) "
                        "[SDM_RESOURCE_PREFIX]")
    parser.add_argument("--sys-dir", default=_env("sys-dir", "/sys"),
                        help="the sysfs root that attribute rules, pools and nvidia-gpu read "
                        "(default /sys) [SDM_SYS_DIR]")
    parser.add_argument("--pass-device-specs", action="store_true",
                        default=_env("pass-device-specs", "false").lower() in ("1", "true", "yes"),
                        help="nvidia-gpu: also hand over /dev/nvidiactl, nvidia-uvm, nvidia-uvm-tools and "
                        "nvidia-modeset, as the original's -pass-device-specs did [SDM_PASS_DEVICE_SPECS]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smarter-device-manager", formatter_class=_Formatter,
        description="Kubernetes device plugin: advertises /dev nodes matched by rules as "
        "extended resources and hands them to containers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,list,check-config,dra}")

    serve = sub.add_parser("serve", help="run the device plugin (the default)",
                           formatter_class=_Formatter)
    _discovery_options(serve)
    serve.add_argument("--host-dev-dir", default=_env("host-dev-dir"),
                       help="where --dev-dir is on the node, if mounted elsewhere "
                       "(default: same as --dev-dir) [SDM_HOST_DEV_DIR]")
    serve.add_argument("--plugin-dir", default=_env("plugin-dir", DEFAULT_PLUGIN_DIR),
                       help=f"kubelet device plugin dir (default {DEFAULT_PLUGIN_DIR}) "
                       "[SDM_PLUGIN_DIR]")
    serve.add_argument("--log-level", default=_env("log-level", "info"),
                       choices=["debug", "info", "warning", "error"], type=str.lower,
                       help="[SDM_LOG_LEVEL]")
    serve.add_argument("--log-format", default=_env("log-format", "text"),
                       choices=["text", "json"], help="[SDM_LOG_FORMAT]")
    serve.add_argument("--http-address", type=parse_address,
                       default=_env("http-address", ""),
                       help="serve /healthz /readyz /metrics on HOST:PORT (default: off) "
                       "[SDM_HTTP_ADDRESS]")
    serve.add_argument("--removal-grace", type=parse_duration,
                       default=_env("removal-grace", DEFAULT_REMOVAL_GRACE),
                       help="how long a vanished device stays advertised as Unhealthy before "
                       "it is withdrawn (default 300s) [SDM_REMOVAL_GRACE]")

    lister = sub.add_parser("list", help="print what this node would advertise, and exit",
                            formatter_class=_Formatter)
    _discovery_options(lister)
    lister.add_argument("--output", "-o", choices=["table", "json"], default="table")
    lister.add_argument("--all", action="store_true",
                        help="also show every device node no rule selects, with its sysfs attributes, "
                        "to write a rule from")

    check = sub.add_parser("check-config", help="validate a config file: exit 0 if valid, 2 if not",
                           formatter_class=_Formatter)
    check.add_argument("path")

    # DRA mode (docs/dra.md). Its options and start-up live in dracli.py, which imports nothing
    # of DRA mode until it runs: `serve` keeps its memory.
    from smarter_device_manager import dracli

    dracli.add_parser(sub, _discovery_options, _Formatter, parse_address)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0].startswith("-") and args_in[0] not in ("-h", "--help",
                                                                           "--version")):
        args_in.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_in)
    try:
        if args.command == "check-config":
            return _check_config(args.path)
        if args.command == "list":
            return _list(args)
        if args.command == "dra":
            from smarter_device_manager import dracli

            return dracli.run(args, _resolve_config, _load_or_exit)
        return _serve(args)
    except BrokenPipeError:  # `... | head` closed our stdout: not an error
        sys.stderr.close()
        return 0


def _resolve_config(explicit: str | None) -> tuple[str | None, str]:
    """(path to read or None for embedded, why) following the --config contract."""
    if explicit:
        return explicit, "given"
    if os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG, "default path"
    return None, f"{DEFAULT_CONFIG} does not exist"


def _check_config(path: str) -> int:
    from smarter_device_manager.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: invalid ({len(exc.problems)} problem(s))", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: valid, {len(config.rules)} rules")
    return 0


def _load_or_exit(explicit: str | None) -> Any:
    from smarter_device_manager.config import ConfigError, load_config

    path, _ = _resolve_config(explicit)
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    from smarter_device_manager.discovery import discover
    from smarter_device_manager.listing import describe_inventory, render_table

    config = _load_or_exit(args.config)
    if config is None:
        return EXIT_USAGE
    if not os.path.isdir(args.dev_dir):
        print(f"error: dev dir {args.dev_dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    inventory = discover(args.dev_dir, config, args.resource_prefix, args.sys_dir,
                         args.pass_device_specs)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=sys.stderr)
    rows = describe_inventory(inventory, args.resource_prefix, args.dev_dir, args.sys_dir, args.all)
    if args.output == "json":
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(render_table(rows), end="")
    if not inventory.resources:
        print(f"(no device under {args.dev_dir} matches the {len(config.rules)} rules of "
              f"{config.source})", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Keep ssl out before asyncio is imported: asyncio would map libssl and
    # libcrypto (4.5 MiB RSS) for unix sockets that never use TLS.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio
    import logging

    from smarter_device_manager import logs, lowmem

    lowmem.install()
    from smarter_device_manager.daemon import Daemon, Settings

    logs.setup(args.log_level, args.log_format)
    log = logging.getLogger("smarter_device_manager")
    path, why = _resolve_config(args.config)
    if path is None:
        log.info("using the embedded default config (%s)", why)
    config = _load_or_exit(args.config)
    if config is None:
        log.error("not starting: the config is invalid (see above); check it with "
                  "'smarter-device-manager check-config PATH'")
        return EXIT_USAGE
    if not os.path.isdir(args.dev_dir):
        log.error("not starting: dev dir %s is not a directory", args.dev_dir)
        return EXIT_USAGE
    watch_dir = os.path.dirname(os.path.abspath(path or DEFAULT_CONFIG))
    http = args.http_address
    settings = Settings(
        config_path=path,
        config_watch_dir=watch_dir if os.path.isdir(watch_dir) else None,
        dev_dir=args.dev_dir,
        host_dev_dir=args.host_dev_dir or args.dev_dir,
        plugin_dir=args.plugin_dir,
        prefix=args.resource_prefix,
        removal_grace=args.removal_grace,
        sys_dir=args.sys_dir,
        pass_device_specs=args.pass_device_specs,
        http_host=http[0] if http else None,
        http_port=http[1] if http else 0,
    )

    async def run() -> int:
        return await Daemon(settings, config).run()

    try:
        return asyncio.run(run())
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("not starting: %s%s", where, exc.strerror or exc)
        return 1

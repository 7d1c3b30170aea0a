"""Command line: ``serve`` (the default), ``list`` and ``check-config``.

Every ``serve`` option can also come from an environment variable
``SDM_<OPTION>`` so a DaemonSet can set it without rewriting args; a value
from a variable is checked by the same function as the flag's, and a bad one
is the same usage error (exit 2). ``list``
and ``check-config`` reuse config and discovery unchanged: what ``list``
prints is what ``serve`` advertises.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

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


_UNSET: Any = object()  # an option's value when its flag was not given


class _EnvOption(NamedTuple):
    flag: str
    variable: str
    convert: Callable[[str], Any]
    default: Any


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options may also come from ``SDM_*`` variables.

    Why not argparse's ``default=os.environ.get(...)``: argparse converts a string
    default with ``type`` but never checks it against ``choices``, and its errors
    name only the flag. Here a variable's value goes through the very function
    that checks the flag, and a bad one is the same usage error (exit 2), naming
    the option and the variable.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(**kwargs)
        self.env_options: list[_EnvOption] = []
        self.commands: dict[str, _Parser] = {}  # subcommand parsers, by name

    def add_env_option(self, flag: str, convert: Callable[[str], Any], default: Any,
                       help: str, metavar: str | None = None, **extra: Any) -> None:
        variable = "SDM_" + flag.removeprefix("--").upper().replace("-", "_")
        self.add_argument(flag, type=convert, default=_UNSET, metavar=metavar,
                          help=f"{help} [{variable}]", **extra)
        self.env_options.append(_EnvOption(flag, variable, convert, default))

    def take_env(self, args: argparse.Namespace) -> None:
        """Fill the options not given as flags from their variables, else their defaults."""
        for option in self.env_options:
            dest = option.flag.removeprefix("--").replace("-", "_")
            if getattr(args, dest) is not _UNSET:
                continue  # the command line wins
            text = os.environ.get(option.variable)
            source = f"set by {option.variable}"
            if text is None:
                if not isinstance(option.default, str):
                    setattr(args, dest, option.default)
                    continue
                text, source = option.default, "default"
            try:
                setattr(args, dest, option.convert(text))
            except argparse.ArgumentTypeError as exc:
                self.error(f"argument {option.flag} ({source}): {exc}")


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


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}; choose from {', '.join(choices)}")
        return text.lower()

    return convert


def _config_path(text: str) -> str | None:
    """An explicit config file must exist; empty means not given (default path or embedded)."""
    if not text:
        return None
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"config file {text!r}: no such file")
    return text


def _dev_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"dev dir {text!r} is not a directory")
    return text


def _absolute(what: str) -> Callable[[str], str | None]:
    def convert(text: str) -> str | None:
        if not text:
            return None
        if not os.path.isabs(text):
            raise argparse.ArgumentTypeError(f"{what} {text!r} must be an absolute path")
        return text

    return convert


def _plugin_dir(text: str) -> str:
    path = _absolute("plugin dir")(text)
    if path is None:
        raise argparse.ArgumentTypeError("plugin dir must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"plugin dir {path!r} is not a directory")
    return path


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


DEFAULT_CDI_KIND = "smarter-devices.io/device"


def _cdi_kind(text: str) -> str:
    if text == DEFAULT_CDI_KIND:
        return text  # valid (tests/test_cdisync.py checks): serve with --cdi off never loads cdi
    from smarter_device_manager.cdi import kind_problem

    problem = kind_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"CDI kind {text!r} is not valid: {problem}")
    return text


def _cdi_options(parser: _Parser, switch: bool) -> None:
    if switch:
        parser.add_env_option("--cdi", _choice("off", "on"), "off", metavar="{off,on}",
                              help="keep a CDI spec of the devices in --cdi-dir and name them in "
                              "Allocate answers (Kubernetes >= 1.31 with containerd >= 1.7 or "
                              "CRI-O; default off)")
    parser.add_env_option("--cdi-dir", _absolute("CDI dir"), "/var/run/cdi", metavar="DIR",
                          help="where the container runtime reads CDI specs (default /var/run/cdi)")
    parser.add_env_option("--cdi-kind", _cdi_kind, DEFAULT_CDI_KIND, metavar="VENDOR/CLASS",
                          help="the CDI kind of our devices (default smarter-devices.io/device)")


def _sys_dir(text: str) -> str:
    """The sysfs root; relative paths are fine (a fake tree in a test directory). Not checked
    for existence here: a config of plain rules never reads it, and one that does says which
    device has no sysfs entry."""
    if not text:
        raise argparse.ArgumentTypeError("sys dir must not be empty (the default is /sys)")
    return os.path.abspath(text)


def _discovery_options(parser: _Parser) -> None:
    parser.add_env_option("--config", _config_path, None, metavar="PATH",
                          help=f"rules file (default {DEFAULT_CONFIG}, or the embedded default "
                          "config when that file does not exist)")
    parser.add_env_option("--dev-dir", _dev_dir, "/dev", metavar="DIR",
                          help="where to look for devices (default /dev)")
    parser.add_env_option("--resource-prefix", _prefix, DEFAULT_PREFIX, metavar="NAME",
                          help=f"resource name domain (default {DEFAULT_PREFIX})")
    parser.add_env_option("--sys-dir", _sys_dir, "/sys", metavar="DIR",
                          help="the sysfs root that attribute rules, name templates, pools and "
                          "nvidia-gpu read (default /sys)")
    parser.add_env_option("--pass-device-specs", _boolean, "false", metavar="BOOL", nargs="?",
                          const="true",
                          help="nvidia-gpu: also hand over /dev/nvidiactl, nvidia-uvm, nvidia-uvm-tools "
                          "and nvidia-modeset where they exist, as the original's -pass-device-specs did")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="smarter-device-manager",
        description="Kubernetes device plugin: advertises /dev nodes matched by rules as "
        "extended resources and hands them to containers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,list,cdi,check-config,dra}")

    serve = sub.add_parser("serve", help="run the device plugin (the default)")
    _discovery_options(serve)
    serve.add_env_option("--host-dev-dir", _absolute("host dev dir"), None, metavar="DIR",
                         help="where --dev-dir is on the node, if mounted elsewhere "
                         "(default: same as --dev-dir)")
    serve.add_env_option("--plugin-dir", _plugin_dir, DEFAULT_PLUGIN_DIR, metavar="DIR",
                         help=f"kubelet device plugin dir (default {DEFAULT_PLUGIN_DIR})")
    serve.add_env_option("--log-level", _choice("debug", "info", "warning", "error"), "info",
                         metavar="{debug,info,warning,error}", help="what to log (default info)")
    serve.add_env_option("--log-format", _choice("text", "json"), "text",
                         metavar="{text,json}",
                         help="log lines as text, or json with one object per line (default text)")
    serve.add_env_option("--http-address", parse_address, "", metavar="HOST:PORT",
                         help="serve /healthz /readyz /metrics on HOST:PORT (default: off)")
    serve.add_env_option("--removal-grace", parse_duration, DEFAULT_REMOVAL_GRACE,
                         metavar="DURATION",
                         help="how long a vanished device stays advertised as Unhealthy before "
                         "it is withdrawn (default 300s)")
    _cdi_options(serve, switch=True)

    lister = sub.add_parser("list", help="print what this node would advertise, and exit")
    _discovery_options(lister)
    lister.add_argument("--output", "-o", choices=["table", "json"], default="table")
    lister.add_argument("--all", action="store_true",
                        help="also show every device node no rule selects, with its sysfs "
                        "attributes, to write a rule from")
    _cdi_options(lister, switch=True)

    cdi = sub.add_parser("cdi", help="print (or write, or remove) the CDI spec of this node's "
                         "devices, for podman/docker --device smarter-devices.io/device=NAME")
    _discovery_options(cdi)
    _cdi_options(cdi, switch=False)
    cdi.add_env_option("--host-dev-dir", _absolute("host dev dir"), None, metavar="DIR",
                       help="where --dev-dir is on the host, if mounted elsewhere (default: same as "
                       "--dev-dir)")
    action = cdi.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true",
                        help="write it into --cdi-dir (atomically) instead of printing it")
    action.add_argument("--remove", action="store_true",
                        help="remove our spec file from --cdi-dir (after uninstalling)")

    check = sub.add_parser("check-config", help="validate a config file: exit 0 if valid, 2 if not")
    check.add_argument("path")

    # DRA mode (docs/dra.md). Its options and start-up live in dracli.py, which imports nothing
    # of DRA mode until it runs: `serve` keeps its memory.
    from smarter_device_manager import dracli

    dra = dracli.add_parser(sub, _discovery_options, parse_address)
    parser.commands = {"serve": serve, "list": lister, "cdi": cdi, "check-config": check, "dra": dra}
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0].startswith("-") and args_in[0] not in ("-h", "--help",
                                                                           "--version")):
        args_in.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_in)
    command = parser.commands.get(args.command)
    if command is not None:
        command.take_env(args)
    try:
        if args.command == "check-config":
            return _check_config(args.path)
        if args.command == "list":
            return _list(args)
        if args.command == "cdi":
            return _cdi(args)
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


def _load_or_exit(path: str | None) -> Any:
    """Load the config at ``path`` (None: the embedded one), as _resolve_config chose it."""
    from smarter_device_manager.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    from smarter_device_manager.discovery import discover
    from smarter_device_manager.listing import describe_inventory, render_table

    config = _load_or_exit(_resolve_config(args.config)[0])
    if config is None:
        return EXIT_USAGE
    inventory = discover(args.dev_dir, config, args.resource_prefix, args.sys_dir,
                         args.pass_device_specs)
    for problem in inventory.problems:
        print(f"warning: {problem}", file=sys.stderr)
    rows = describe_inventory(inventory, args.resource_prefix, args.dev_dir, args.sys_dir, args.all)
    if args.cdi == "on":
        _add_cdi_names(rows, inventory, args.cdi_kind)
    if args.output == "json":
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(render_table(rows), end="")
    if args.cdi == "on":
        from smarter_device_manager.cdi import spec_file_name

        print(f"CDI on: spec {os.path.join(args.cdi_dir, spec_file_name(args.cdi_kind))}, "
              f"devices named {args.cdi_kind}=<resource> (pools: <resource>:<identity>)")
    if not inventory.resources:
        print(f"(no device under {args.dev_dir} matches the {len(config.rules)} rules of "
              f"{config.source})", file=sys.stderr)
    return 0


def _add_cdi_names(rows: list[dict[str, Any]], inventory: Any, kind: str) -> None:
    from smarter_device_manager.cdi import qualified
    from smarter_device_manager.cdisync import pool_device, resource_device
    from smarter_device_manager.discovery import KIND_POOL

    for row, resource in zip(rows, inventory.resources.values(), strict=False):
        if resource.kind == KIND_POOL:
            row["cdi"] = [qualified(kind, pool_device(resource, [m])) for m in resource.members]
        else:
            row["cdi"] = [qualified(kind, resource_device(resource))]


def _cdi(args: argparse.Namespace) -> int:
    """The spec ``serve --cdi on`` would write, for runtimes outside Kubernetes (Podman)."""
    import json

    from smarter_device_manager.cdisync import CdiKeeper
    from smarter_device_manager.discovery import discover

    keeper = CdiKeeper(_cdi_settings(args))
    if args.remove:
        keeper.remove()
        print(f"removed {keeper.path}")
        return 0
    config = _load_or_exit(_resolve_config(args.config)[0])
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
    print(f"wrote {keeper.path}: {len(names)} devices: " + " ".join(f"{args.cdi_kind}={n}" for n in names))
    return 0


def _cdi_settings(args: argparse.Namespace) -> Any:
    from smarter_device_manager.cdisync import CdiSettings  # only paid for with --cdi on

    return CdiSettings(args.cdi_dir, args.cdi_kind, args.resource_prefix, args.dev_dir,
                       args.host_dev_dir or args.dev_dir)


def _serve(args: argparse.Namespace) -> int:
    # Keep ssl out before asyncio is imported: asyncio would map libssl and
    # libcrypto (4.5 MiB RSS) for unix sockets that never use TLS.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio
    import logging

    from smarter_device_manager import logs, lowmem

    logs.setup(args.log_level, args.log_format)  # first: a trim left out is logged as a warning
    lowmem.install()
    from smarter_device_manager.daemon import Daemon, Settings

    log = logging.getLogger("smarter_device_manager")
    # Resolved once: whether the default file exists must not change between the decision
    # and the read (a daemon told "embedded" while reading the file, or the reverse).
    path, why = _resolve_config(args.config)
    if path is None:
        log.info("using the embedded default config (%s)", why)
    config = _load_or_exit(path)
    if config is None:
        log.error("not starting: the config is invalid (see above); check it with "
                  "'smarter-device-manager check-config PATH'")
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
        cdi=_cdi_settings(args) if args.cdi == "on" else None,
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

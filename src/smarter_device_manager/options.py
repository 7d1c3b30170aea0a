"""The command line's shared parts: options that also come from ``SDM_*`` variables, the
checks of their values, the options every mode shares, and how the config file is chosen.

Every option can also come from an environment variable ``SDM_<OPTION>`` so a DaemonSet can
set it without rewriting args; a value from a variable is checked by the same function as the
flag's, and a bad one is the same usage error (exit 2). Both modes (``deviceplugin.cli``,
``dra.cli``) and the commands of ``cli`` build their parsers from here, so this module imports
nothing of either mode.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from smarter_device_manager.config import DEFAULT_PATH as DEFAULT_CONFIG
from smarter_device_manager.naming import DEFAULT_PREFIX, prefix_problem

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


class Parser(argparse.ArgumentParser):
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
        self.commands: dict[str, Parser] = {}  # subcommand parsers, by name

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


def prefix(text: str) -> str:
    problem = prefix_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"resource prefix {text!r} is not valid: {problem}")
    return text


def choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}; choose from {', '.join(choices)}")
        return text.lower()

    return convert


def config_path(text: str) -> str | None:
    """An explicit config file must exist; empty means not given (default path or embedded)."""
    if not text:
        return None
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"config file {text!r}: no such file")
    return text


def dev_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"dev dir {text!r} is not a directory")
    return text


def absolute(what: str) -> Callable[[str], str | None]:
    def convert(text: str) -> str | None:
        if not text:
            return None
        if not os.path.isabs(text):
            raise argparse.ArgumentTypeError(f"{what} {text!r} must be an absolute path")
        return text

    return convert


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


DEFAULT_CDI_KIND = "smarter-devices.io/device"


def cdi_kind(text: str) -> str:
    if text == DEFAULT_CDI_KIND:
        return text  # valid (tests/test_cdisync.py checks): serve with --cdi off never loads cdi
    from smarter_device_manager.cdi import kind_problem

    problem = kind_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"CDI kind {text!r} is not valid: {problem}")
    return text


def cdi_options(parser: Parser, switch: bool) -> None:
    if switch:
        parser.add_env_option("--cdi", choice("off", "on"), "off", metavar="{off,on}",
                              help="keep a CDI spec of the devices in --cdi-dir and name them in "
                              "Allocate answers (Kubernetes >= 1.31 with containerd >= 1.7 or "
                              "CRI-O; default off)")
    parser.add_env_option("--cdi-dir", absolute("CDI dir"), "/var/run/cdi", metavar="DIR",
                          help="where the container runtime reads CDI specs (default /var/run/cdi)")
    parser.add_env_option("--cdi-kind", cdi_kind, DEFAULT_CDI_KIND, metavar="VENDOR/CLASS",
                          help="the CDI kind of our devices (default smarter-devices.io/device)")


def sys_dir(text: str) -> str:
    """The sysfs root; relative paths are fine (a fake tree in a test directory). Not checked
    for existence here: a config of plain rules never reads it, and one that does says which
    device has no sysfs entry."""
    if not text:
        raise argparse.ArgumentTypeError("sys dir must not be empty (the default is /sys)")
    return os.path.abspath(text)


def allow_mount_prefixes(text: str) -> tuple[str, ...]:
    from smarter_device_manager.mountpolicy import parse_prefixes

    try:
        return parse_prefixes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def mount_prefix_option(parser: Parser) -> None:
    """The escape hatch of the mounts allowlist (see mountpolicy): for whoever deploys the
    daemon, so it is an option or variable, never a key of the rules file."""
    parser.add_env_option("--allow-mount-prefix", allow_mount_prefixes, "", metavar="DIR[:DIR...]",
                          help="also let rules' mounts expose host paths under these directories "
                          "(beyond /sys/class, /sys/bus, /sys/devices, /sys/firmware/devicetree, "
                          "firmware and /usr/share); anything a mount exposes is readable by every "
                          "pod given the device")


def discovery_options(parser: Parser) -> None:
    parser.add_env_option("--config", config_path, None, metavar="PATH",
                          help=f"rules file (default {DEFAULT_CONFIG}, or the embedded default "
                          "config when that file does not exist)")
    parser.add_env_option("--dev-dir", dev_dir, "/dev", metavar="DIR",
                          help="where to look for devices (default /dev)")
    parser.add_env_option("--resource-prefix", prefix, DEFAULT_PREFIX, metavar="NAME",
                          help=f"resource name domain (default {DEFAULT_PREFIX})")
    parser.add_env_option("--sys-dir", sys_dir, "/sys", metavar="DIR",
                          help="the sysfs root that attribute rules, name templates, pools and "
                          "nvidia-gpu read (default /sys)")
    mount_prefix_option(parser)
    parser.add_env_option("--pass-device-specs", boolean, "false", metavar="BOOL", nargs="?",
                          const="true",
                          help="nvidia-gpu: also hand over /dev/nvidiactl, nvidia-uvm, nvidia-uvm-tools "
                          "and nvidia-modeset where they exist, as the original's -pass-device-specs did")


def resolve_config(explicit: str | None) -> tuple[str | None, str]:
    """(path to read or None for embedded, why) following the --config contract."""
    if explicit:
        return explicit, "given"
    if os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG, "default path"
    return None, f"{DEFAULT_CONFIG} does not exist"


def load_or_exit(path: str | None) -> Any:
    """Load the config at ``path`` (None: the embedded one), as resolve_config chose it."""
    from smarter_device_manager.config import load_config
    from smarter_device_manager.rules import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def config_watch_dir(path: str | None) -> str | None:
    """The directory a running daemon watches for changes to its rules file (None if it is not
    there: nothing to watch)."""
    watch_dir = os.path.dirname(os.path.abspath(path or DEFAULT_CONFIG))
    return watch_dir if os.path.isdir(watch_dir) else None


def daemon_options(parser: Parser) -> None:
    """What every long-running subcommand (``serve``, ``dra``, ``dra-classes``) offers the same way:
    what to log, how, and the HTTP listener for probes and metrics."""
    parser.add_env_option("--log-level", choice("debug", "info", "warning", "error"), "info",
                          metavar="{debug,info,warning,error}", help="what to log (default info)")
    parser.add_env_option("--log-format", choice("text", "json"), "text", metavar="{text,json}",
                          help="log lines as text, or json with one object per line (default text)")
    parser.add_env_option("--http-address", parse_address, "", metavar="HOST:PORT",
                          help="serve /healthz /readyz /metrics on HOST:PORT (default: off)")

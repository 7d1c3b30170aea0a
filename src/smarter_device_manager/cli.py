"""Command line: ``serve`` (the default), ``list``, ``cdi``, ``check-config``, ``dra`` and
``dra-classes``.

This is the entry point above both modes: it builds one parser from the shared options
(``options``) and each mode's own subcommands (``deviceplugin.cli``, ``dra.cli``), then runs
the one asked for. A mode's code is imported only when its subcommand runs, so ``serve`` never
loads DRA mode (a test checks ``sys.modules``). ``list`` and ``check-config`` reuse config and
discovery unchanged: what ``list`` prints is what ``serve`` advertises.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from smarter_device_manager import __version__
from smarter_device_manager.options import (
    EXIT_USAGE,
    Parser,
    cdi_options,
    discovery_options,
    load_or_exit,
    mount_prefix_option,
    resolve_config,
)

COMMANDS = ("serve", "list", "cdi", "check-config", "dra", "dra-classes")


def build_parser(command: str | None = None) -> Parser:
    """The parser of every subcommand, or (``command`` given) of that one alone: a mode's
    subcommands are imported only when asked for, so ``serve`` never loads any module of DRA
    mode, not even its option definitions."""
    parser = Parser(
        prog="smarter-device-manager",
        description="Kubernetes device plugin: advertises /dev nodes matched by rules as "
        "extended resources and hands them to containers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        if command is None or command == name:
            parser.commands[name] = _add_command(sub, name)
    return parser


def _add_command(sub: Any, name: str) -> Parser:
    if name == "serve":
        from smarter_device_manager.deviceplugin import cli as deviceplugin_cli

        return deviceplugin_cli.add_serve_parser(sub)
    if name == "cdi":
        from smarter_device_manager.deviceplugin import cli as deviceplugin_cli

        return deviceplugin_cli.add_cdi_parser(sub)
    if name == "dra":
        from smarter_device_manager.dra import cli as dra_cli

        return dra_cli.add_parser(sub)  # type: ignore[no-any-return]
    if name == "dra-classes":
        from smarter_device_manager.dra import classescli

        return classescli.add_parser(sub)  # type: ignore[no-any-return]
    if name == "list":
        lister: Parser = sub.add_parser("list", help="print what this node would advertise, and exit")
        discovery_options(lister)
        lister.add_argument("--output", "-o", choices=["table", "json"], default="table")
        lister.add_argument("--all", action="store_true",
                            help="also show every device node no rule selects, with its sysfs "
                            "attributes, to write a rule from")
        cdi_options(lister, switch=True)
        return lister
    check: Parser = sub.add_parser("check-config",
                                   help="validate a config file: exit 0 if valid, 2 if not")
    check.add_argument("path")
    mount_prefix_option(check)
    return check


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0].startswith("-") and args_in[0] not in ("-h", "--help",
                                                                           "--version")):
        args_in.insert(0, "serve")
    parser = build_parser(args_in[0] if args_in[0] in COMMANDS else None)
    args = parser.parse_args(args_in)
    command = parser.commands.get(args.command)
    if command is not None:
        command.take_env(args)
    if getattr(args, "allow_mount_prefix", None):
        from smarter_device_manager import mountpolicy

        mountpolicy.allow(args.allow_mount_prefix)
    try:
        if args.command == "check-config":
            return _check_config(args.path)
        if args.command == "list":
            return _list(args)
        if args.command == "dra":
            from smarter_device_manager.dra import cli as dra_cli

            return dra_cli.run(args)
        if args.command == "dra-classes":
            from smarter_device_manager.dra import classescli

            return classescli.run(args)
        from smarter_device_manager.deviceplugin import cli as deviceplugin_cli

        if args.command == "cdi":
            return deviceplugin_cli.cdi(args)
        return deviceplugin_cli.serve(args)
    except BrokenPipeError:  # `... | head` closed our stdout: not an error
        sys.stderr.close()
        return 0


def _check_config(path: str) -> int:
    from smarter_device_manager.config import load_config
    from smarter_device_manager.rules import ConfigError

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


def _list(args: argparse.Namespace) -> int:
    from smarter_device_manager.discovery import discover
    from smarter_device_manager.listing import describe_inventory, printable, render_table

    config = load_or_exit(resolve_config(args.config)[0])
    if config is None:
        return EXIT_USAGE
    inventory = discover(args.dev_dir, config, args.resource_prefix, args.sys_dir,
                         args.pass_device_specs)
    for problem in inventory.problems:
        print(f"warning: {printable(problem)}", file=sys.stderr)
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
    """The CDI names ``serve --cdi on`` gives each resource (device-plugin mode's naming)."""
    from smarter_device_manager.cdi import qualified
    from smarter_device_manager.deviceplugin.cdisync import pool_device, resource_device
    from smarter_device_manager.discovery import KIND_POOL

    for row, resource in zip(rows, inventory.resources.values(), strict=False):
        if resource.kind == KIND_POOL:
            row["cdi"] = [qualified(kind, pool_device(resource, [m])) for m in resource.members]
        else:
            row["cdi"] = [qualified(kind, resource_device(resource))]

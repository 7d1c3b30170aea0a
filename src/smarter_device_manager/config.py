"""Config: YAML text -> validated rules.

The format is the original project's: a YAML list of
``{devicematch: <regex>, nummaxdevices: <int>}``. Validation is strict because
the original's silence hurt users (a typo in ``devicematch`` made an empty
regex that exported every entry of /dev). Every problem names the file, the
line and the rule, and says what to do; all problems are reported at once so a
user fixes a file in one pass.

We parse with ``yaml.compose`` (nodes with line marks) instead of
``yaml.safe_load`` so errors can point at lines. The composer is libyaml's
(``CSafeLoader``) when PyYAML was built with it, about 3 times faster than the
pure-Python one (10,000 rules: 0.5 s instead of 1.5 s) with the same nodes and
line marks; the pure one is the fallback (the image ships without libyaml). For
a file that is not valid YAML the pure composer is asked again, so the message
is the same whichever PyYAML is installed.

Beyond the original's two keys, a rule may select devices by what they are
(``subsystem`` and udev-like ``attributes`` read from sysfs), give them a
``name`` (fixed or a ``{attribute}`` template), gather them in a ``pool``, and
say how a container sees them (``containerpath``, ``env``, ``mounts``). Every
such key is optional, so every existing file keeps its meaning; each one is
validated here, with the same file:line messages, so nothing reaches the
walk that could surprise it at run time.
"""

from __future__ import annotations

import os

import yaml

from smarter_device_manager.rulekeys import Collector, parse_rule
from smarter_device_manager.rules import Config, ConfigError, Rule

DEFAULT_PATH = "/root/config/conf.yaml"  # the original's location; a ConfigMap mounts there
EMBEDDED_SOURCE = "<embedded default config>"


# libyaml's composer when PyYAML has it; tests set this to the pure one to compare the two.
LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = (
    yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader)


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree; a YAML error is raised by the pure composer, whose messages
    are the ones users have always seen (libyaml words them differently)."""
    try:
        return yaml.compose(text, Loader=LOADER)
    except yaml.YAMLError:
        if LOADER is yaml.SafeLoader:
            raise
    return yaml.compose(text, Loader=yaml.SafeLoader)


def parse_config(text: str, source: str) -> Config:
    """Validate ``text``; raise ``ConfigError`` listing every problem."""
    out = Collector(source)
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(source, [f"{source}:{line}: not valid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"{source}: not valid YAML: {exc}"]) from None

    if root is None:
        out.warn(1, None, "the config has no rules: no device will be advertised")
        return Config(source, (), tuple(out.warnings), text)
    if not isinstance(root, yaml.SequenceNode):
        hint = (
            "start each rule with '- ', e.g. '- devicematch: ^video[0-9]*$'"
            if isinstance(root, yaml.MappingNode)
            else "write a list of rules like '- {devicematch: ^video[0-9]*$, nummaxdevices: 10}'"
        )
        out.error(root.start_mark.line + 1, None, f"the config must be a YAML list of rules; {hint}")
        raise ConfigError(source, out.errors)
    if not root.value:
        out.warn(root.start_mark.line + 1, None, "the rule list is empty: no device will be advertised")

    rules: list[Rule] = []
    for index, node in enumerate(root.value, start=1):
        rule = parse_rule(node, index, out)
        if rule is not None:
            rules.append(rule)
    _warn_on_repeats(rules, out)
    if out.errors:
        raise ConfigError(source, out.errors)
    return Config(source, tuple(rules), tuple(out.warnings), text)


def _warn_on_repeats(rules: list[Rule], out: Collector) -> None:
    seen: dict[tuple[object, ...], Rule] = {}
    names: dict[str, Rule] = {}
    paths: dict[str, Rule] = {}
    for rule in rules:
        first = seen.setdefault(rule.selector[:3], rule)
        if first is not rule and rule.pattern:
            out.warn(rule.line, rule.index, f"repeats the pattern of rule {first.index} "
                     f"(line {first.line}); the first rule always wins, so this one never applies")
        if rule.name and not rule.fields:
            other = names.setdefault(rule.name, rule)
            if other is not rule:
                out.error(rule.line, rule.index, f"name '{rule.name}' is also the name of rule "
                          f"{other.index} (line {other.line}); one resource cannot come from two rules "
                          "(give one of them 'pool: true' and merge them, or another name)")
        for path in ([rule.container_path] if rule.container_path else []) + \
                [m.container_path for m in rule.mounts]:
            other = paths.setdefault(path, rule)
            if other is not rule:
                out.error(rule.line, rule.index, f"container path {path} is also used by rule "
                          f"{other.index} (line {other.line}); a container given both would see one "
                          "on top of the other")


def embedded_text() -> str:
    # A plain open() rather than importlib.resources, which pulls in tempfile,
    # shutil and pathlib (about 1 MiB of RSS) for a file that is always on disk.
    with open(os.path.join(os.path.dirname(__file__), "default_config.yaml"), encoding="utf-8") as f:
        return f.read()


def load_config(path: str | None) -> Config:
    """Read and validate ``path``; ``None`` means the embedded default."""
    if path is None:
        return parse_config(embedded_text(), EMBEDDED_SOURCE)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(path, [f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError(path, [f"{path}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError(path, [f"{path}: permission denied"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(decode_config(data, path), path)


def decode_config(data: bytes, source: str) -> str:
    """A config file's bytes as text; ``ConfigError`` if they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"{source}: not UTF-8 text ({exc.reason})"]) from None


def reread(configured: str | None, last: bytes) -> tuple[str, bytes, Config | ConfigError] | None:
    """A running daemon's look at its rules file after an event: None if there is nothing to
    take (unchanged, unreadable or empty, the last two logged); else (path, bytes read, the new
    Config or why it is rejected). ``configured`` None means the embedded default is in use: a
    file created later at the default path takes over.

    The file is read once and what was read is what gets parsed: a second read could see another
    version (a ConfigMap swap, an editor mid-write) than the one compared. A zero-byte file is
    what an editor leaves between truncating and writing; taking it would withdraw every
    resource, so it is ignored (removing all rules takes '[]').
    """
    import logging

    log = logging.getLogger(__name__)
    path = configured
    if path is None:
        if not os.path.isfile(DEFAULT_PATH):
            return None
        path = DEFAULT_PATH
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        log.warning("config %s cannot be read (%s); keeping the current rules", path, exc.strerror)
        return None
    if data == last:
        return None
    if not data.strip():
        log.warning("config %s is empty; keeping the current rules (write '[]' to remove every rule "
                    "on purpose)", path)
        return None
    try:
        return path, data, parse_config(decode_config(data, path), path)
    except ConfigError as exc:
        return path, data, exc

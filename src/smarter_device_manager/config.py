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
    _refuse_pool_path_collisions(rules, out)
    _refuse_variable_collisions(rules, out)
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


def _refuse_pool_path_collisions(rules: list[Rule], out: Collector) -> None:
    """A pool's ``containerpath`` P is numbered per container (P0, P1, ..., or P0/<node> for a
    member with several nodes): a path another rule (or the pool's own mount) uses there, or
    another pool's P that is P plus digits (its device 0 is P's device 10), puts two things at
    one place in a container given both. Exact repeats are ``_warn_on_repeats``'s."""
    import re

    pools = [(rule, rule.container_path) for rule in rules if rule.pool and rule.container_path]
    for pool, prefix in pools:
        numbered = re.compile(re.escape(prefix) + r"([0-9]+)(/.*)?")
        for rule in rules:
            fixed = [] if rule.pool or not rule.container_path else [rule.container_path]
            for path in fixed + [m.container_path for m in rule.mounts]:
                match = numbered.fullmatch(path)
                if match is None:
                    continue
                number = int(match.group(1))
                if rule is pool:
                    out.error(rule.line, rule.index, f"mount container path {path} is where this pool "
                              f"(containerpath {prefix}) puts its device number {number}; mount it "
                              f"at a path that is not {prefix} followed by digits")
                elif rule.index > pool.index:
                    out.error(rule.line, rule.index, f"container path {path} is where pool rule "
                              f"{pool.index} (line {pool.line}, containerpath {prefix}) puts its device "
                              f"number {number}; a container given both would see one on top of the "
                              f"other: use a path that is not {prefix} followed by digits")
                else:
                    out.error(pool.line, pool.index, f"pool containerpath {prefix} puts its device "
                              f"number {number} at {path}, which rule {rule.index} (line {rule.line}) "
                              f"uses; a container given both would see one on top of the other: "
                              f"give the pool another containerpath, e.g. {prefix}-")
        for other, other_prefix in pools:
            if other is pool or not re.fullmatch(re.escape(prefix) + r"[0-9]+", other_prefix):
                continue
            later, earlier = (other, pool) if other.index > pool.index else (pool, other)
            out.error(later.line, later.index, f"pool containerpaths {prefix} (rule {pool.index}) and "
                      f"{other_prefix} (rule {other.index}) overlap: {other_prefix}0 is device 0 of one "
                      f"and device {other_prefix[len(prefix):]}0 of the other (rule {earlier.index}, "
                      f"line {earlier.line}); give one pool a containerpath that does not end in a "
                      f"digit, e.g. {other_prefix}-")


def _refuse_variable_collisions(rules: list[Rule], out: Collector) -> None:
    """``<PREFIX>_<NAME>`` keeps only letters and digits of a name, and a pool also sets
    ``<PREFIX>_<NAME>_IDS``: two fixed names that map to one variable (``gps-a``, ``gps_a``; a
    resource ``gps-ids`` beside pool ``gps``) would give a container one value for both.
    Names with {attribute} fields are only known on the node."""
    from smarter_device_manager.rulekeys import ENV_PREFIX, IDS_SUFFIX, variable_part

    claims: dict[str, tuple[Rule, str]] = {}
    for rule in rules:
        if not rule.name or rule.fields:
            continue
        own = variable_part(rule.name)
        mine = [(own, f"name '{rule.name}'")]
        if rule.pool:
            mine.append((own + IDS_SUFFIX, f"pool '{rule.name}' (the IDs it hands over)"))
        for variable, what in mine:
            other, said = claims.setdefault(variable, (rule, what))
            if other is rule or other.name == rule.name:  # one name twice: _warn_on_repeats says so
                continue
            out.error(rule.line, rule.index, f"{ENV_PREFIX}{variable} would be set by both {what} and "
                      f"{said} of rule {other.index} (line {other.line}); a container given both sees "
                      "one value. Rename one of them: names that differ only in '-', '.', '_' or case "
                      "make one variable, and a pool NAME also sets NAME_IDS")


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

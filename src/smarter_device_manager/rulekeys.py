"""Config: YAML text -> validated rules.

The format is the original project's: a YAML list of
``{devicematch: <regex>, nummaxdevices: <int>}``. Validation is strict because
the original's silence hurt users (a typo in ``devicematch`` made an empty
regex that exported every entry of /dev). Every problem names the file, the
line and the rule, and says what to do; all problems are reported at once so a
user fixes a file in one pass.

We parse with ``yaml.compose`` (nodes with line marks) instead of
``yaml.safe_load`` so errors can point at lines.

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
import re
from dataclasses import dataclass, field

import yaml

DEFAULT_PATH = "/root/config/conf.yaml"  # the original's location; a ConfigMap mounts there
EMBEDDED_SOURCE = "<embedded default config>"
KNOWN_KEYS = ("devicematch", "nummaxdevices", "name", "subsystem", "attributes", "pool",
              "containerpath", "env", "mounts")
MOUNT_KEYS = ("hostpath", "containerpath")
NVIDIA_GPU = "nvidia-gpu"  # the original's keyword: GPUs listed from <sys>/devices, not /dev
# Attribute names users write most; a key that differs from one only in case is a typo
# (sysfs names are case-sensitive, so 'idvendor' would silently never match).
WELL_KNOWN_ATTRIBUTES = ("idVendor", "idProduct", "serial", "manufacturer", "product",
                         "bInterfaceNumber", "bInterfaceClass", "bNumInterfaces", "busnum",
                         "devnum", "devpath", "vendor", "device", "name", "index", "driver",
                         "subsystem")
# A variable prefix the daemon writes itself (which devices a container got, and where).
ENV_PREFIX = "SMARTER_DEVICES_"
# Host paths a mount may not expose: the process table, device nodes (only the device
# checks may hand those over) and the kubelet's own sockets and state.
FORBIDDEN_HOST_PATHS = ("/proc", "/dev", "/var/lib/kubelet")
# More copies of one device than any node can run containers (the kubelet's
# max-pods tops out in the hundreds): a larger number is a typo, and each copy
# costs a Device entry in every ListAndWatch message.
MAX_DEVICES = 1000

_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")  # no leading zeros, signs, bases, separators
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME_TEXT = re.compile(r"^[A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Mount:
    """A read-only bind mount of a host path into the container."""

    host_path: str
    container_path: str


@dataclass(frozen=True)
class Rule:
    """One validated rule; ``index`` is its 1-based position in the list.

    ``regex`` is None when the rule selects only by ``subsystem``/``attributes``
    (or is the ``nvidia-gpu`` keyword): then every device node is a candidate
    and sysfs decides.
    """

    index: int
    line: int
    pattern: str
    regex: re.Pattern[str] | None
    count: int
    name: str | None = None  # fixed resource name, or a template with {attribute} fields
    subsystem: str | None = None  # glob on the device's own subsystem
    attributes: tuple[tuple[str, str], ...] = ()  # (attribute, glob), all on one sysfs level
    pool: bool = False
    container_path: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    nvidia: bool = False
    fields: tuple[str, ...] = field(default=(), compare=False)  # placeholders of ``name``

    def matches(self, rel_path: str) -> bool:
        """Does the path part of the rule select ``rel_path`` (sysfs not consulted)?"""
        return not self.nvidia and (self.regex is None or self.regex.search(rel_path) is not None)

    @property
    def needs_sysfs(self) -> bool:
        """Whether matching, naming or identity of this rule's devices reads sysfs."""
        return bool(self.subsystem is not None or self.attributes or self.fields or self.pool)

    @property
    def selector(self) -> tuple[object, ...]:
        """What decides which devices the rule selects and how they are named: a
        resource stays "still wanted" across a reload while a rule with the same
        selector exists (its devices may merely be unplugged)."""
        return (self.pattern, self.subsystem, self.attributes, self.name, self.pool, self.nvidia)

    @property
    def plain(self) -> bool:
        """A rule of the original's kind: a path pattern, resources named after paths."""
        return not (self.needs_sysfs or self.name or self.nvidia)


@dataclass(frozen=True)
class Config:
    source: str
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()
    text: str = ""

    def first_match(self, rel_path: str) -> Rule | None:
        for rule in self.rules:
            if rule.plain and rule.matches(rel_path):
                return rule
        return None

    def selects(self, rule: Rule, rel_path: str) -> bool:
        """Is a resource made by ``rule`` from ``rel_path`` still wanted by this config?

        For the original's plain rules, any plain rule matching the path keeps it
        (as 2.0 did); a resource of an attribute, named or nvidia rule is kept while
        a rule with the same selector exists, since its device may just be unplugged.
        """
        if rule.plain:
            return self.first_match(rel_path) is not None
        return any(r.selector == rule.selector for r in self.rules)

    @property
    def needs_sysfs(self) -> bool:
        return any(rule.needs_sysfs or rule.nvidia for rule in self.rules)


class ConfigError(Exception):
    """A config that must not be used; ``problems`` are ready-to-print lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def where(self, line: int, rule: int | None) -> str:
        return f"{self.source}:{line}: " + (f"rule {rule}: " if rule else "")

    def error(self, line: int, rule: int | None, message: str) -> None:
        self.errors.append(self.where(line, rule) + message)

    def warn(self, line: int, rule: int | None, message: str) -> None:
        self.warnings.append(self.where(line, rule) + message)


def parse_config(text: str, source: str) -> Config:
    """Validate ``text``; raise ``ConfigError`` listing every problem."""
    out = _Collector(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
        rule = _parse_rule(node, index, out)
        if rule is not None:
            rules.append(rule)
    _warn_on_repeats(rules, out)
    if out.errors:
        raise ConfigError(source, out.errors)
    return Config(source, tuple(rules), tuple(out.warnings), text)


def _parse_rule(node: yaml.Node, index: int, out: _Collector) -> Rule | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        out.error(line, index, "a rule must be a mapping like "
                  "'{devicematch: ^ttyUSB[0-9]*$, nummaxdevices: 1}'")
        return None
    fields = _mapping_fields(node, index, KNOWN_KEYS, out)
    errors_before = len(out.errors)

    pattern_node = fields.get("devicematch")
    regex: re.Pattern[str] | None = None
    pattern = ""
    nvidia = False
    if pattern_node is not None:
        regex, pattern = _parse_pattern(pattern_node, index, out)
        nvidia = pattern == NVIDIA_GPU
        if nvidia:
            regex = None
    subsystem = _string(fields.get("subsystem"), "subsystem", index, out, example="subsystem: tty")
    attributes = _parse_attributes(fields.get("attributes"), index, out)
    if pattern_node is None and subsystem is None and not attributes:
        if "attributes" in fields and attributes is not None:
            out.error(line, index, "the rule has nothing to match: 'attributes' is empty and there is no "
                      "'devicematch' or 'subsystem'; add e.g. attributes: {idVendor: \"0403\"}")
        elif "subsystem" not in fields and "attributes" not in fields:
            out.error(line, index, "missing 'devicematch' (a regular expression such as ^ttyUSB[0-9]*$), "
                      "or 'subsystem'/'attributes' to select devices by what they are")
    if nvidia:
        extra = sorted(set(fields) - {"devicematch", "nummaxdevices"})
        if extra:
            out.error(line, index, f"'devicematch: {NVIDIA_GPU}' is the original's GPU keyword and takes "
                      f"only 'nummaxdevices'; remove {', '.join(repr(k) for k in extra)}")

    count_node = fields.get("nummaxdevices")
    count: int | None = 0
    if count_node is None:
        out.warn(line, index, "no 'nummaxdevices': the device is advertised with capacity 0 "
                 "(as the original did); add e.g. 'nummaxdevices: 1'")
    else:
        count = _parse_count(count_node, index, out)

    name, placeholders = _parse_name(fields.get("name"), index, out)
    pool = _parse_bool(fields.get("pool"), "pool", index, out)
    if pool and (name is None or placeholders):
        out.error(line, index, "'pool: true' needs a fixed 'name' (e.g. name: usb-serial): a pool is one "
                  "resource whose members are the matching devices")
    container_path = _parse_path(fields.get("containerpath"), "containerpath", index, out,
                                 forbidden=("/proc", "/sys"))
    env = _parse_env(fields.get("env"), index, out)
    mounts = _parse_mounts(fields.get("mounts"), index, out)
    if mounts is not None:
        seen = {container_path} if container_path else set()
        for mount in mounts:
            if mount.container_path in seen:
                out.error(line, index, f"container path {mount.container_path} is used twice in this rule; "
                          "give each mount and the device its own path")
            seen.add(mount.container_path)

    if len(out.errors) > errors_before or count is None or env is None or mounts is None \
            or attributes is None:
        return None
    return Rule(index=index, line=line, pattern=pattern, regex=regex, count=count, name=name,
                subsystem=subsystem, attributes=attributes, pool=pool, container_path=container_path,
                env=env, mounts=mounts, nvidia=nvidia, fields=placeholders)


def _mapping_fields(
    node: yaml.MappingNode, index: int, known: tuple[str, ...], out: _Collector
) -> dict[str, yaml.Node]:
    """Keys of a mapping, each once; unknown and repeated keys are errors with a hint."""
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        key_line = key_node.start_mark.line + 1
        if key in fields:
            out.error(key_line, index, f"'{key}' is given twice; keep one")
        elif key not in known:
            import difflib  # only when there is a typo to explain

            close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys are {', '.join(known)}"
            out.error(key_line, index, f"unknown key '{key}'; {hint}")
        fields[key] = value_node
    return fields


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _string(node: yaml.Node | None, key: str, index: int, out: _Collector, example: str) -> str | None:
    """A non-empty string scalar (quoted if YAML would read it as something else)."""
    if node is None:
        return None
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        shown = f" (got {node.value!r})" if isinstance(node, yaml.ScalarNode) else ""
        out.error(_line(node), index, f"'{key}' must be a string{shown}; quote it, e.g. {example}")
        return None
    if not node.value:
        out.error(_line(node), index, f"'{key}' is empty; give a value, e.g. {example}")
        return None
    return str(node.value)


def _parse_bool(node: yaml.Node | None, key: str, index: int, out: _Collector) -> bool:
    if node is None:
        return False
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL_TAG or node.value not in ("true", "false"):
        shown = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
        out.error(_line(node), index, f"'{key}' must be true or false, got {shown!r}")
        return False
    return bool(node.value == "true")


def _parse_attributes(
    node: yaml.Node | None, index: int, out: _Collector
) -> tuple[tuple[str, str], ...] | None:
    """udev ATTRS-like pairs; values are strings (USB IDs such as 0403 must be quoted,
    or YAML reads them as octal numbers)."""
    if node is None:
        return ()
    if not isinstance(node, yaml.MappingNode):
        out.error(_line(node), index, "'attributes' must be a mapping of sysfs attribute to value, "
                  "e.g. attributes: {idVendor: \"0403\", idProduct: \"6001\"}")
        return None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    ok = True
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = _line(key_node)
        if key in seen:
            out.error(line, index, f"attribute '{key}' is given twice; keep one")
            ok = False
            continue
        seen.add(key)
        if not _ATTRIBUTE_NAME.match(key) or key in (".", ".."):
            out.error(line, index, f"'{key}' is not a sysfs attribute name (letters, digits, '_', '.', "
                      "':' and '-' only)")
            ok = False
            continue
        twin = next((w for w in WELL_KNOWN_ATTRIBUTES if w.lower() == key.lower() and w != key), None)
        if twin:
            out.error(line, index, f"unknown attribute '{key}'; did you mean '{twin}'? "
                      "sysfs attribute names are case-sensitive")
            ok = False
            continue
        if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != _STR_TAG:
            shown = value_node.value if isinstance(value_node, yaml.ScalarNode) else "a collection"
            out.error(_line(value_node), index, f"attribute '{key}' must be a quoted string, got {shown!r}; "
                      f"write {key}: \"{shown}\" (unquoted, YAML may read 0403 as the number 259)")
            ok = False
            continue
        pairs.append((key, str(value_node.value)))
    return tuple(pairs) if ok else None


def _parse_name(
    node: yaml.Node | None, index: int, out: _Collector
) -> tuple[str | None, tuple[str, ...]]:
    """A fixed resource name, or a template whose {attribute} fields come from sysfs."""
    text = _string(node, "name", index, out, example="name: gps or name: gps-{serial}")
    if text is None or node is None:
        return None, ()
    line = _line(node)
    placeholders = tuple(_PLACEHOLDER.findall(text))
    static = _PLACEHOLDER.sub("", text)
    if "{" in static or "}" in static:
        out.error(line, index, f"'name' {text!r} has an unbalanced brace; write fields as {{serial}}")
        return None, ()
    bad = [p for p in placeholders if not _ATTRIBUTE_NAME.match(p)]
    if bad:
        out.error(line, index, f"'name' {text!r}: {{{bad[0]}}} is not an attribute name")
        return None, ()
    if not _NAME_TEXT.match(static):
        out.error(line, index, f"'name' {text!r} may hold only letters, digits, '_', '.', '-' "
                  "and {attribute} fields")
        return None, ()
    from smarter_device_manager.naming import name_problem

    problem = name_problem(_PLACEHOLDER.sub("x", text))
    if problem:
        out.error(line, index, f"'name' {text!r} would be rejected by the kubelet: {problem}")
        return None, ()
    return text, placeholders


def _parse_path(
    node: yaml.Node | None, key: str, index: int, out: _Collector, forbidden: tuple[str, ...]
) -> str | None:
    text = _string(node, key, index, out, example=f"{key}: /dev/gps")
    if text is None or node is None:
        return None
    line = _line(node)
    if not text.startswith("/"):
        out.error(line, index, f"'{key}' {text!r} must be an absolute path, e.g. /dev/gps")
        return None
    if ".." in text.split("/") or os.path.normpath(text) != text or text == "/":
        out.error(line, index, f"'{key}' {text!r} must be a plain absolute path without '..', '.', "
                  "'//' or a trailing '/'")
        return None
    for root in forbidden:
        if text == root or text.startswith(root + "/"):
            out.error(line, index, f"'{key}' {text!r} is under {root}, which is not allowed here")
            return None
    return text


def _parse_env(node: yaml.Node | None, index: int, out: _Collector) -> tuple[tuple[str, str], ...] | None:
    if node is None:
        return ()
    if not isinstance(node, yaml.MappingNode):
        out.error(_line(node), index, "'env' must be a mapping of variable to value, "
                  "e.g. env: {GPS_BAUD: \"9600\"}")
        return None
    pairs: list[tuple[str, str]] = []
    ok = True
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = _line(key_node)
        if not _ENV_NAME.match(key):
            out.error(line, index, f"env: {key!r} is not a variable name (letters, digits and '_', "
                      "not starting with a digit)")
            ok = False
        elif key.startswith(ENV_PREFIX):
            out.error(line, index, f"env: {key} starts with {ENV_PREFIX}, which the daemon sets itself "
                      "(which devices a container got); choose another name")
            ok = False
        elif any(key == k for k, _ in pairs):
            out.error(line, index, f"env: {key} is given twice; keep one")
            ok = False
        elif not isinstance(value_node, yaml.ScalarNode) or value_node.tag != _STR_TAG:
            shown = value_node.value if isinstance(value_node, yaml.ScalarNode) else "a collection"
            out.error(_line(value_node), index, f"env: {key} must be a quoted string, got {shown!r}; "
                      f"write {key}: \"{shown}\"")
            ok = False
        else:
            pairs.append((key, str(value_node.value)))
    return tuple(pairs) if ok else None


def _parse_mounts(node: yaml.Node | None, index: int, out: _Collector) -> tuple[Mount, ...] | None:
    if node is None:
        return ()
    example = "mounts: [{hostpath: /sys/class/gpio, containerpath: /sys/class/gpio}]"
    if not isinstance(node, yaml.SequenceNode):
        out.error(_line(node), index, f"'mounts' must be a list, e.g. {example}")
        return None
    mounts: list[Mount] = []
    ok = True
    for item in node.value:
        if not isinstance(item, yaml.MappingNode):
            out.error(_line(item), index, f"each mount must be a mapping, e.g. {example}")
            ok = False
            continue
        errors = len(out.errors)
        fields = _mapping_fields(item, index, MOUNT_KEYS, out)
        missing = [k for k in MOUNT_KEYS if k not in fields]
        if missing:
            out.error(_line(item), index, f"mount needs {' and '.join(missing)}, e.g. {example}")
        host = _parse_path(fields.get("hostpath"), "hostpath", index, out, FORBIDDEN_HOST_PATHS)
        target = _parse_path(fields.get("containerpath"), "containerpath", index, out, ("/proc",))
        if len(out.errors) > errors or host is None or target is None:
            ok = False
            continue
        mounts.append(Mount(host, target))
    return tuple(mounts) if ok else None


def _parse_pattern(
    node: yaml.Node, index: int, out: _Collector
) -> tuple[re.Pattern[str] | None, str]:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        out.error(line, index, "'devicematch' must be a string; quote it, e.g. devicematch: '^1wire$'")
        return None, ""
    pattern = str(node.value)
    if not pattern:
        out.error(line, index, "'devicematch' is empty and would match every entry of /dev; "
                  "give a pattern such as ^video[0-9]*$")
        return None, pattern
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        at = f" at position {exc.pos}" if exc.pos is not None else ""
        out.error(line, index, f"'devicematch' {pattern!r} is not a valid regular expression: "
                  f"{exc.msg}{at}")
        return None, pattern
    return regex, pattern


def _parse_count(node: yaml.Node, index: int, out: _Collector) -> int | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT_TAG:
        shown = node.value if isinstance(node, yaml.ScalarNode) else f"a {getattr(node, 'id', 'node')}"
        out.error(line, index, f"'nummaxdevices' must be a whole number from 0 to {MAX_DEVICES}, "
                  f"got {shown!r}; write e.g. nummaxdevices: 10")
        return None
    value = yaml.SafeLoader("").construct_yaml_int(node)
    if not _DECIMAL.fullmatch(node.value):
        # YAML 1.1 (PyYAML) reads 010 as octal 8, 1:30 as base 60 (90), and also takes
        # 0x10, 0b10, 1_000 and +5: a count nobody meant. Plain decimal digits only.
        out.error(line, index, f"'nummaxdevices' must be written in plain decimal digits, got "
                  f"{node.value!r} (YAML reads it as {value}); write e.g. nummaxdevices: 10")
        return None
    if value < 0:
        out.error(line, index, f"'nummaxdevices' is {value}; it must be 0 or more "
                  "(0 advertises the device with capacity 0)")
        return None
    if value > MAX_DEVICES:
        out.error(line, index, f"'nummaxdevices' is {value}, more than the limit of {MAX_DEVICES} "
                  "containers sharing one device; use a smaller number")
        return None
    return int(value)


def _warn_on_repeats(rules: list[Rule], out: _Collector) -> None:
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

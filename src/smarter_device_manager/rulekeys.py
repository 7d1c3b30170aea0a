"""One rule's keys: each key's value checked and turned into a :class:`~smarter_device_manager.rules.Rule`.

A problem is recorded with the file, the line of the key and the rule, and says what to write
instead; all of a file's problems are collected (:class:`Collector`) so a user fixes it in one
pass. A rule with any problem is left out, and ``config`` then rejects the whole file.
"""

from __future__ import annotations

import os
import re

import yaml

from smarter_device_manager import mountpolicy
from smarter_device_manager.rules import Mount, Rule

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
IDS_SUFFIX = "_IDS"  # a pool's <PREFIX>_<NAME>_IDS: the identities it handed over


def variable_part(name: str) -> str:
    """The part of ``<PREFIX>_<NAME>`` a resource name gives (``usb-serial`` -> ``USB_SERIAL``),
    as both modes write it (handover.env_name, dra.devices.env_name): every character that is
    not an ASCII letter or digit becomes '_', so ``gps-a`` and ``gps_a`` give one variable."""
    return "".join(c if c.isalnum() and c.isascii() else "_" for c in name.upper())


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


class Collector:
    """Every problem of a file, each with its file, line and rule: all are reported at once."""

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


def parse_rule(node: yaml.Node, index: int, out: Collector) -> Rule | None:
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
    node: yaml.MappingNode, index: int, known: tuple[str, ...], out: Collector
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


def _string(node: yaml.Node | None, key: str, index: int, out: Collector, example: str) -> str | None:
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


def _parse_bool(node: yaml.Node | None, key: str, index: int, out: Collector) -> bool:
    if node is None:
        return False
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL_TAG or node.value not in ("true", "false"):
        shown = node.value if isinstance(node, yaml.ScalarNode) else "a collection"
        out.error(_line(node), index, f"'{key}' must be true or false, got {shown!r}")
        return False
    return bool(node.value == "true")


def _parse_attributes(
    node: yaml.Node | None, index: int, out: Collector
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
    node: yaml.Node | None, index: int, out: Collector
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
    node: yaml.Node | None, key: str, index: int, out: Collector, forbidden: tuple[str, ...]
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


def _parse_env(node: yaml.Node | None, index: int, out: Collector) -> tuple[tuple[str, str], ...] | None:
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


def _parse_mounts(node: yaml.Node | None, index: int, out: Collector) -> tuple[Mount, ...] | None:
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
        host = _parse_path(fields.get("hostpath"), "hostpath", index, out, mountpolicy.FORBIDDEN)
        if host is not None:
            problem = mountpolicy.config_problem(host)
            if problem:
                out.error(_line(fields["hostpath"]), index, f"'hostpath' {host!r} {problem}")
                host = None
        target = _parse_path(fields.get("containerpath"), "containerpath", index, out, ("/proc",))
        if len(out.errors) > errors or host is None or target is None:
            ok = False
            continue
        mounts.append(Mount(host, target))
    return tuple(mounts) if ok else None


def _parse_pattern(
    node: yaml.Node, index: int, out: Collector
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


def _parse_count(node: yaml.Node, index: int, out: Collector) -> int | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT_TAG:
        shown = node.value if isinstance(node, yaml.ScalarNode) else f"a {getattr(node, 'id', 'node')}"
        out.error(line, index, f"'nummaxdevices' must be a whole number from 0 to {MAX_DEVICES}, "
                  f"got {shown!r}; write e.g. nummaxdevices: 10")
        return None
    if _DECIMAL.fullmatch(node.value):
        value = int(node.value)
    else:
        value = yaml.SafeLoader("").construct_yaml_int(node)  # only to say what YAML made of it
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

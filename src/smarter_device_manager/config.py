"""Config: YAML text -> validated rules.

The format is the original project's: a YAML list of
``{devicematch: <regex>, nummaxdevices: <int>}``. Validation is strict because
the original's silence hurt users (a typo in ``devicematch`` made an empty
regex that exported every entry of /dev). Every problem names the file, the
line and the rule, and says what to do; all problems are reported at once so a
user fixes a file in one pass.

We parse with ``yaml.compose`` (nodes with line marks) instead of
``yaml.safe_load`` so errors can point at lines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import yaml

DEFAULT_PATH = "/root/config/conf.yaml"  # the original's location; a ConfigMap mounts there
EMBEDDED_SOURCE = "<embedded default config>"
KNOWN_KEYS = ("devicematch", "nummaxdevices")
# More copies of one device than any node can run containers (the kubelet's
# max-pods tops out in the hundreds): a larger number is a typo, and each copy
# costs a Device entry in every ListAndWatch message.
MAX_DEVICES = 1000

_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")  # no leading zeros, signs, bases, separators
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Rule:
    """One validated rule; ``index`` is its 1-based position in the list."""

    index: int
    line: int
    pattern: str
    regex: re.Pattern[str]
    count: int

    def matches(self, rel_path: str) -> bool:
        return self.regex.search(rel_path) is not None


@dataclass(frozen=True)
class Config:
    source: str
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()
    text: str = ""

    def first_match(self, rel_path: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(rel_path):
                return rule
        return None


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
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        key_line = key_node.start_mark.line + 1
        if key in fields:
            out.error(key_line, index, f"'{key}' is given twice; keep one")
        elif key not in KNOWN_KEYS:
            import difflib  # only when there is a typo to explain

            close = difflib.get_close_matches(key.lower(), KNOWN_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys are {', '.join(KNOWN_KEYS)}"
            out.error(key_line, index, f"unknown key '{key}'; {hint}")
        fields[key] = value_node

    pattern_node = fields.get("devicematch")
    regex: re.Pattern[str] | None = None
    pattern = ""
    if pattern_node is None:
        out.error(line, index, "missing 'devicematch' (a regular expression such as ^ttyUSB[0-9]*$)")
    else:
        regex, pattern = _parse_pattern(pattern_node, index, out)

    count_node = fields.get("nummaxdevices")
    count: int | None = 0
    if count_node is None:
        out.warn(line, index, "no 'nummaxdevices': the device is advertised with capacity 0 "
                 "(as the original did); add e.g. 'nummaxdevices: 1'")
    else:
        count = _parse_count(count_node, index, out)
    if regex is None or count is None:
        return None
    return Rule(index=index, line=line, pattern=pattern, regex=regex, count=count)


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
    if pattern == "nvidia-gpu":
        out.warn(line, index, "the original's 'nvidia-gpu' keyword is not supported; it is matched "
                 "as a plain pattern (use e.g. ^nvidia[0-9]+$ and ^nvidiactl$ instead)")
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
    seen: dict[str, Rule] = {}
    for rule in rules:
        first = seen.setdefault(rule.pattern, rule)
        if first is not rule:
            out.warn(rule.line, rule.index, f"repeats the pattern of rule {first.index} "
                     f"(line {first.line}); the first rule always wins, so this one never applies")


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

"""The rules a config holds, as the rest of the daemon sees them: validated and typed.

Built only by ``config`` (which reads and checks the file) through ``rulekeys`` (which checks
each rule's keys); everything else only reads them. A rule knows whether the path part of it
selects a device and whether it needs sysfs; sysfs itself is consulted by ``discovery``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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

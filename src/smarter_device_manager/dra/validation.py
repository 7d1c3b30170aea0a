"""What the API server accepts in a ResourceSlice device, checked before we send it.

The API server validates a ResourceSlice as a whole: one device it refuses (a name that is not a
DNS label, an attribute value over 64 *bytes*, two devices of one name) makes it refuse the whole
slice with HTTP 422, and the publisher would retry that forever while every device of the node
is gone from DRA. So each device is checked here first, with the rules of Kubernetes 1.36's
``resource.k8s.io/v1`` validation (``pkg/apis/resource/validation/validation.go``: validateDevice,
validateQualifiedName, validateDeviceAttribute), and only what does not fit is left out, with a
reason: an attribute the server would refuse is dropped from its device; a device that still
would not fit (its name, too many attributes, a name taken by another) is left out of the slices.

Lengths are counted as Go's ``len()`` does, in bytes of UTF-8; :func:`cut` shortens a string to
at most that many bytes without splitting a character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VALUE_MAX = 64  # DeviceAttributeMaxValueLength (bytes)
ID_MAX = 32  # DeviceMaxIDLength
DOMAIN_MAX = 63  # DeviceMaxDomainLength
LABEL_MAX = 63
ATTRIBUTES_AND_CAPACITIES_MAX = 32  # ResourceSliceMaxAttributesAndCapacitiesPerDevice
ATTRIBUTE_VALUES_MAX = 48  # ResourceSliceMaxAttributeValuesPerDevice

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
                     r"(-(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
                     r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?")
_KINDS = ("int", "bool", "string", "version")


def size(text: str) -> int:
    """The length the API server counts: bytes of UTF-8."""
    return len(text.encode("utf-8", "surrogateescape"))


def cut(text: str, limit: int = VALUE_MAX) -> str:
    """``text`` shortened to at most ``limit`` bytes of UTF-8, on a character boundary.

    (A CH340 clone's ``manufacturer`` in CJK characters is 3 bytes a character: cutting at 64
    characters left 192 bytes, and the server refused the node's whole slice.)
    """
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a device name (a DNS label), or None."""
    if len(name) > LABEL_MAX:
        return f"device name {name!r} is longer than {LABEL_MAX} characters"
    if not _LABEL.fullmatch(name):
        return f"device name {name!r} is not a DNS label (lowercase letters, digits, '-')"
    return None


def attribute_name_problem(key: str) -> str | None:
    """Why ``key`` is not an attribute name (a C identifier of at most 32 bytes, optionally
    qualified by a domain of at most 63 bytes), or None."""
    domain, slash, ident = key.rpartition("/")
    if slash and (not domain or size(domain) > DOMAIN_MAX or not _SUBDOMAIN.fullmatch(domain.lower())):
        return f"attribute name {key!r}: the domain is not a DNS subdomain of at most {DOMAIN_MAX} bytes"
    if size(ident) > ID_MAX or not _C_IDENTIFIER.fullmatch(ident):
        return f"attribute name {key!r} is not a C identifier of at most {ID_MAX} bytes"
    return None


def attribute_problem(key: str, value: Mapping[str, Any]) -> str | None:
    """Why the attribute ``key: value`` would be refused, or None."""
    problem = attribute_name_problem(key)
    if problem is not None:
        return problem
    kinds = [kind for kind in _KINDS if kind in value]
    if len(kinds) != 1 or len(value) != 1:
        return f"attribute {key}: exactly one of {', '.join(_KINDS)} must be set"
    item = value[kinds[0]]
    if kinds[0] in ("string", "version"):
        if not isinstance(item, str):
            return f"attribute {key}: the {kinds[0]} is not a string"
        if size(item) > VALUE_MAX:
            return f"attribute {key}: {item!r} is longer than {VALUE_MAX} bytes"
        if kinds[0] == "version" and not _SEMVER.fullmatch(item):
            return f"attribute {key}: {item!r} is not a semantic version"
    elif kinds[0] == "int" and (not isinstance(item, int) or isinstance(item, bool)):
        return f"attribute {key}: {item!r} is not an integer"
    elif kinds[0] == "bool" and not isinstance(item, bool):
        return f"attribute {key}: {item!r} is not a bool"
    return None


def fit_entry(entry: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """A ``spec.devices[]`` entry the API server accepts, made from ``entry`` by dropping the
    attributes it would refuse, or None when the device itself does not fit; and why."""
    problems: list[str] = []
    name = str(entry.get("name", ""))
    problem = name_problem(name)
    if problem is not None:
        return None, [problem]
    attributes = {}
    for key, value in (entry.get("attributes") or {}).items():
        problem = attribute_problem(key, value)
        if problem is None:
            attributes[key] = value
        else:
            problems.append(f"device {name}: {problem}; published without it")
    capacity = entry.get("capacity") or {}
    for key in capacity:
        problem = attribute_name_problem(key)
        if problem is not None:
            return None, [*problems, f"device {name}: capacity {problem}"]
    if len(attributes) + len(capacity) > ATTRIBUTES_AND_CAPACITIES_MAX:
        return None, [*problems, f"device {name}: {len(attributes) + len(capacity)} attributes and "
                      f"capacities, more than the {ATTRIBUTES_AND_CAPACITIES_MAX} allowed"]
    if len(attributes) > ATTRIBUTE_VALUES_MAX:
        return None, [*problems, f"device {name}: more than {ATTRIBUTE_VALUES_MAX} attribute values"]
    return {**entry, "attributes": attributes}, problems

"""Resource and socket names, checked against the kubelet's rules.

The kubelet rejects a Register whose resource name is not a valid extended
resource name, and says so only in its own log. The original exported such
names anyway and they silently never appeared; we check first and tell the user
which device and why.
"""

from __future__ import annotations

import binascii
import re

DEFAULT_PREFIX = "smarter-devices"
NAME_MAX = 63
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def sanitize(rel_path: str) -> str:
    """``net/tun`` -> ``net_tun``: the original's mapping, kept for compatibility."""
    return _UNSAFE.sub("_", rel_path)


def name_problem(name: str) -> str | None:
    """Why the kubelet would reject ``<prefix>/<name>``, or None if it accepts it."""
    if len(name) > NAME_MAX:
        return f"it is {len(name)} characters long and the kubelet allows at most {NAME_MAX}"
    if not _NAME.match(name):
        return "it must start and end with a letter or digit"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be the domain part of an extended resource name."""
    if not prefix or len(prefix) > 253 - len("requests."):
        return "it must be 1 to 244 characters"
    if prefix.endswith("kubernetes.io") or prefix.endswith("k8s.io"):
        return "names under kubernetes.io and k8s.io are reserved"
    if not all(_DNS_LABEL.match(label) and len(label) <= 63 for label in prefix.split(".")):
        return "it must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
    return None


def socket_name(prefix: str, name: str, plugin_dir: str) -> str:
    """Socket file name for a resource, short enough for ``sun_path``.

    The default prefix keeps the original's ``smarter-<name>.sock``; another
    prefix gets its own stem so two managers on one node never share a socket.
    Long names (k3s has a long plugin dir) are shortened with a stable hash.
    """
    stem = "smarter" if prefix == DEFAULT_PREFIX else sanitize(prefix)
    file_name = f"{stem}-{name}.sock"
    room = SOCKET_PATH_MAX - len(plugin_dir.rstrip("/")) - 1
    if len(file_name) <= room:
        return file_name
    # crc32, not hashlib: hashlib maps OpenSSL's libcrypto (3.4 MiB of RSS).
    digest = f"{binascii.crc32(f'{prefix}/{name}'.encode()):08x}"
    keep = max(0, room - len(stem) - len(digest) - len("--.sock"))
    return f"{stem}-{name[:keep]}-{digest}.sock" if keep else f"{digest}.sock"

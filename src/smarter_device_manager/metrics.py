"""Counters and the Prometheus text exposition.

Why not ``prometheus_client``: it imports ``ssl`` unconditionally (its push
gateway code), which maps libssl and libcrypto into a daemon that otherwise
keeps them out, about 4.5 MiB of RSS (docs/decisions.md). What we need is a
few labelled counters plus gauges read from live state at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

PREFIX = "smarter_device_manager_"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]

FAMILIES: dict[str, tuple[str, str]] = {
    "build_info": ("gauge", "Version of the running daemon."),
    "resources": ("gauge", "Resources served, by state (registered, pending, unhealthy)."),
    "devices": ("gauge", "Device IDs advertised to the kubelet, by health."),
    "config_valid": ("gauge", "1 if the last config read was valid, 0 if it was rejected."),
    "allocations_total": ("counter", "Containers given devices by Allocate, by resource."),
    "allocation_errors_total": ("counter", "Allocate calls answered with an error, by resource."),
    "registrations_total": ("counter", "Register calls to the kubelet, by result."),
    "kubelet_restarts_total": ("counter", "Times kubelet.sock was created again."),
    "config_reloads_total": ("counter", "Config files read after start, by result."),
    "hotplug_events_total": ("counter", "Filesystem (inotify) events seen under the dev directory."),
    "rescans_total": ("counter", "Walks of the dev directory, one per walk, by reason: start, "
                      "overflow (inotify queue), sighup, config (a new config applied), retry (of "
                      "a failed attempt), grace (a vanished device's removal grace ended), "
                      "hotplug (filesystem events); the first of these when several coincide."),
    "rescan_failures_total": ("counter", "Attempts to apply changes (config reload, socket "
                              "resync, dev dir walk, serving a resource) that failed; what failed "
                              "is kept and retried with backoff (0.5 s doubling to 30 s)."),
    "rescan_failing": ("gauge", "1 while changes wait for a retry after a failed attempt, else 0."),
    "listandwatch_messages_total": ("counter", "Device lists sent to the kubelet."),
    "cdi_enabled": ("gauge", "1 if Allocate names CDI devices from the spec file in label spec, "
                    "0 if CDI is off or its directory is unusable."),
    "cdi_spec_writes_total": ("counter", "Times the CDI spec file was (re)written."),
}


class Metrics:
    """Named counters; gauges come from ``collectors`` called at scrape time."""

    def __init__(self, families: dict[str, tuple[str, str]] | None = None) -> None:
        self._counters: dict[tuple[str, Labels], float] = {}
        self.collectors: list[Callable[[], Iterable[Sample]]] = []
        self.families = FAMILIES if families is None else families  # DRA mode has its own

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._counters[key] = self._counters.get(key, 0.0) + value

    def render(self) -> str:
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for (name, labels), value in self._counters.items():
            samples.setdefault(name, []).append((labels, value))
        for collect in self.collectors:
            for name, labels, value in collect():
                samples.setdefault(name, []).append((labels, value))
        lines: list[str] = []
        for name, (kind, help_text) in self.families.items():
            full = PREFIX + name
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            for labels, value in sorted(samples.get(name, [])):
                lines.append(f"{full}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)

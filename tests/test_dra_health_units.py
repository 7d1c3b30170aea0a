"""Unplugged devices in DRA mode, without a daemon: the removal grace (``dra/unplugged.py``), the
tainted slices and their write plan (``dra/slices.py``), the health report (``dra/health.py``)
and the ``dra`` options that set them (flags and SDM_* variables alike)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smarter_device_manager.api import dra as pb
from smarter_device_manager.config import load_config
from smarter_device_manager.discovery import KIND_DEVICE, DeviceNode, Resource
from smarter_device_manager.dra.devices import DraDevice
from smarter_device_manager.dra.health import TIMEOUT, report
from smarter_device_manager.dra.slices import desired_specs, plan
from smarter_device_manager.dra.unplugged import Unplugged, parse_time

KEY = "d.io/unplugged"


def _devices(tmp_path: Path, count: int) -> dict[str, DraDevice]:
    path = tmp_path / "conf.yaml"
    path.write_text("- devicematch: ^x\n  nummaxdevices: 1\n")
    rule = load_config(str(path)).rules[0]
    found = {}
    for i in range(count):
        name = f"x{i:04d}"
        node = DeviceNode(name, name)
        found[name] = DraDevice(name, Resource(name, name, KIND_DEVICE, 1, rule, (node,)),
                                (("path", {"string": f"/dev/{name}"}),), (node,))
    return found


def _stored(specs: dict[str, dict[str, Any]], version: int = 7) -> dict[str, dict[str, Any]]:
    return {name: {"metadata": {"name": name, "resourceVersion": str(version)},
                   "spec": json.loads(json.dumps(spec))} for name, spec in specs.items()}


def _server_sets_time_added(observed: dict[str, dict[str, Any]], stamp: str) -> None:
    for obj in observed.values():
        for device in obj["spec"]["devices"]:
            for taint in device.get("taints", ()):
                taint.setdefault("timeAdded", stamp)


# --- the removal grace ------------------------------------------------------------------------------
def test_a_device_that_goes_is_kept_tainted_until_it_comes_back_or_its_grace_ends(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 3)
    unplugged = Unplugged("d.io", 300)
    rest = {k: v for k, v in all_.items() if k != "x0001"}
    assert unplugged.update(all_, rest, lambda d: True, 1000.0) == (["x0001"], [])
    assert unplugged.entries() == [{"name": "x0001", "attributes": {"path": {"string": "/dev/x0001"}},
                                    "taints": [{"key": KEY, "effect": "NoSchedule"}]}]
    assert unplugged.next_expiry() == 1300.0
    # a rescan while it is still gone changes nothing; it is dropped when the grace is over
    assert unplugged.update(rest, rest, lambda d: True, 1299.0) == ([], [])
    assert set(unplugged.gone) == {"x0001"}
    assert unplugged.expire(1300.0) == ["x0001"] and unplugged.entries() == []
    # ... or it comes back first
    unplugged.update(all_, rest, lambda d: True, 2000.0)
    assert unplugged.update(rest, all_, lambda d: True, 2001.0) == ([], ["x0001"])
    assert unplugged.gone == {} and unplugged.next_expiry() is None


def test_no_grace_for_a_device_its_config_no_longer_wants_nor_with_grace_zero(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 2)
    unplugged = Unplugged("d.io", 300)
    assert unplugged.update(all_, {}, lambda d: d.name == "x0000", 5.0) == (["x0000"], [])
    off = Unplugged("d.io", 0)
    assert off.update(all_, {}, lambda d: True, 5.0) == ([], []) and off.entries() == []


def test_effect_noexecute_and_a_bad_effect_is_refused() -> None:
    assert Unplugged("d.io", 1, "NoExecute").effect == "NoExecute"
    with pytest.raises(ValueError, match="not one of NoSchedule, NoExecute"):
        Unplugged("d.io", 1, "noexecute")


def test_a_restarted_daemon_takes_back_what_its_slices_still_carry_tainted(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 3)
    before = Unplugged("d.io", 300)
    present = {k: v for k, v in all_.items() if k == "x0000"}
    before.update(all_, present, lambda d: True, parse_time("2026-05-01T10:00:00Z") or 0)
    observed = _stored(desired_specs("n", "d.io", list(present.values()), 3, before.entries()))
    _server_sets_time_added(observed, "2026-05-01T10:00:01Z")
    foreign = observed["n-d.io-0"]["spec"]["devices"][1]
    foreign["taints"].append({"key": "other.io/broken", "effect": "NoSchedule",
                              "timeAdded": "2026-05-01T09:00:00Z"})
    after = Unplugged("d.io", 300)
    now = (parse_time("2026-05-01T10:00:01Z") or 0) + 100
    assert after.adopt(observed, present, now) == ["x0001", "x0002"]
    assert after.gone["x0001"].since == parse_time("2026-05-01T10:00:01Z"), "from the server's timeAdded"
    assert after.next_expiry() == parse_time("2026-05-01T10:05:01Z")
    assert after.entries() == before.entries(), "the same entries, our taint only"
    # what is on the node, or whose grace is over, or carries no taint of ours, is not taken
    assert Unplugged("d.io", 300).adopt(observed, all_, now) == []
    assert Unplugged("d.io", 300).adopt(observed, present, now + 300) == []
    assert Unplugged("e.io", 300).adopt(observed, present, now) == []


def test_parse_time_reads_what_the_server_writes() -> None:
    assert parse_time("1970-01-01T00:01:40Z") == 100.0
    assert parse_time("1970-01-01T00:01:40.5Z") == 100.0
    assert parse_time("yesterday") is None and parse_time(None) is None


# --- the slices -------------------------------------------------------------------------------------
def test_tainted_slices_keep_the_servers_time_added_and_write_nothing_more(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 3)
    present = {k: v for k, v in all_.items() if k != "x0001"}
    unplugged = Unplugged("d.io", 300)
    unplugged.update(all_, present, lambda d: True, 1.0)
    observed = _stored(desired_specs("n", "d.io", list(all_.values()), 1))
    writes = plan("n", "d.io", list(present.values()), observed, {}, unplugged=unplugged.entries())
    assert [w.verb for w in writes] == ["update"]
    assert writes[0].body is not None
    sent = writes[0].body["spec"]["devices"]
    assert [d["name"] for d in sent] == ["x0000", "x0001", "x0002"], "still in the slice, in order"
    assert sent[1]["taints"] == [{"key": KEY, "effect": "NoSchedule"}], "no timeAdded: the server sets it"
    stored = _stored({writes[0].name: writes[0].body["spec"]}, 8)
    _server_sets_time_added(stored, "2026-05-01T10:00:00Z")
    assert plan("n", "d.io", list(present.values()), stored, {}, unplugged=unplugged.entries()) == [], \
        "the server's timeAdded counts as ours"
    # another device changes: the update carries the server's timeAdded back, unchanged
    fewer = {k: v for k, v in present.items() if k != "x0002"}
    again = plan("n", "d.io", list(fewer.values()), stored, {}, unplugged=unplugged.entries())
    assert again[0].body is not None
    assert again[0].body["spec"]["devices"][1]["taints"][0]["timeAdded"] == "2026-05-01T10:00:00Z"
    # another effect is another taint: the server gives it a time of its own
    other = Unplugged("d.io", 300, "NoExecute")
    other.update(all_, present, lambda d: True, 1.0)
    moved = plan("n", "d.io", list(present.values()), stored, {}, unplugged=other.entries())
    assert moved[0].body is not None and "timeAdded" not in moved[0].body["spec"]["devices"][1]["taints"][0]


def test_slices_are_cut_at_64_devices_while_any_device_is_tainted(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 100)
    writes = plan("n", "d.io", list(all_.values()), {}, {})
    assert [len(w.body["spec"]["devices"]) for w in writes if w.body] == [100]
    present = {k: v for k, v in all_.items() if k != "x0050"}
    unplugged = Unplugged("d.io", 300)
    unplugged.update(all_, present, lambda d: True, 1.0)
    observed = _stored(desired_specs("n", "d.io", list(all_.values()), 1))
    tainted = plan("n", "d.io", list(present.values()), observed, {}, unplugged=unplugged.entries())
    assert [(w.verb, len(w.body["spec"]["devices"]) if w.body else 0) for w in tainted] == \
        [("update", 64), ("create", 36)]
    assert all(w.body and w.body["spec"]["pool"] == {"name": "n", "generation": 2, "resourceSliceCount": 2}
               for w in tainted)
    # a present device of the same name wins over its unplugged entry
    specs = desired_specs("n", "d.io", list(all_.values()), 1, unplugged.entries())
    assert len(specs["n-d.io-0"]["devices"]) == 100


# --- the health report ------------------------------------------------------------------------------
def test_report_is_healthy_for_present_and_unhealthy_with_how_long_ago_for_unplugged(tmp_path: Path) -> None:
    all_ = _devices(tmp_path, 2)
    unplugged = Unplugged("d.io", 300)
    unplugged.update(all_, {"x0000": all_["x0000"]}, lambda d: True, 1000.0)
    answer = report("node-a", ["x0000"], unplugged.gone, 300, 1012.4)
    ids = [d.device for d in answer.devices if d.device is not None]
    assert [(i.pool_name, i.device_name) for i in ids] == [("node-a", "x0000"), ("node-a", "x0001")]
    assert [("node-a", i.device_name, d.health, d.health_check_timeout_seconds,
             d.last_updated_time) for i, d in zip(ids, answer.devices, strict=True)] == [
        ("node-a", "x0000", pb.HEALTHY, TIMEOUT, 1012), ("node-a", "x0001", pb.UNHEALTHY, TIMEOUT, 1012)]
    assert answer.devices[0].message == ""
    assert answer.devices[1].message.startswith("unplugged 12 s ago; leaves the node's ResourceSlice "
                                                "in 287 s")
    assert TIMEOUT >= 3 * 10, "three re-sends fit in the kubelet's timeout"
    assert report("node-a", [], {}, 300, time.time()).devices == []


# --- the options --------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "KUBERNETES_"))}
    return subprocess.run([sys.executable, "-m", "smarter_device_manager", *args], capture_output=True,
                          text=True, env={**full, **(env or {})}, timeout=30)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--unplugged-taint-effect", "NoEvict"], {}, "invalid taint effect: 'NoEvict' (choose from NoSchedule, "
     "NoExecute"),
    ([], {"SDM_UNPLUGGED_TAINT_EFFECT": "None"}, "invalid taint effect: 'None'"),
    (["--unplugged-taint-effect", ""], {}, "invalid taint effect: ''"),
    (["--removal-grace", "soon"], {}, "is not a duration"),
    ([], {"SDM_REMOVAL_GRACE": "-5"}, "is not a duration"),
    (["--removal-grace", "2d"], {}, "is not a duration"),
    (["--removal-grace", "25h"], {}, "is more than a day"),
])
def test_bad_grace_and_effect_are_usage_errors(args: list[str], env: dict[str, str], message: str) -> None:
    result = _cli("dra", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert ("SDM_" in result.stderr) == bool(env), "names the variable when it came from one"


def test_good_grace_and_effect_are_taken() -> None:
    from smarter_device_manager.cli import build_parser

    def parsed(*argv: str) -> tuple[float, str]:
        parser = build_parser("dra")
        args = parser.parse_args(["dra", *argv])
        parser.commands["dra"].take_env(args)
        return args.removal_grace, args.unplugged_taint_effect

    assert parsed("--removal-grace", "5m", "--unplugged-taint-effect", "noexecute") == (300.0, "NoExecute")
    assert parsed("--removal-grace", "0") == (0.0, "NoSchedule")
    assert parsed() == (300.0, "NoSchedule")

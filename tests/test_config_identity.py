"""Config: the keys that select devices by what they are (issue "devices by what they are").

Every key is optional, so old files keep their meaning; every bad value gets the
usual ``file:line: rule N:`` message with what to write instead.
"""

from __future__ import annotations

import pytest

from smarter_device_manager.config import parse_config
from smarter_device_manager.rules import ConfigError, Mount

GPS = """\
- name: gps
  subsystem: tty
  attributes:
    idVendor: "0403"
    idProduct: "6001"
    serial: "A50285BI"
  nummaxdevices: 1
  containerpath: /dev/gps
  env:
    GPS_BAUD: "9600"
  mounts:
    - hostpath: /sys/class/gpio
      containerpath: /sys/class/gpio
- name: usb-serial
  pool: true
  subsystem: tty
  attributes: {idVendor: "10c4"}
  nummaxdevices: 1
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf.yaml")
    return info.value.problems


def one_error(text: str) -> str:
    [problem] = errors(text)
    return problem


def test_the_issue_example_parses_into_rules() -> None:
    config = parse_config(GPS, "conf.yaml")
    gps, pool = config.rules
    assert gps.regex is None and gps.pattern == ""
    assert gps.name == "gps" and gps.subsystem == "tty"
    assert gps.attributes == (("idVendor", "0403"), ("idProduct", "6001"), ("serial", "A50285BI"))
    assert gps.container_path == "/dev/gps"
    assert gps.env == (("GPS_BAUD", "9600"),)
    assert gps.mounts == (Mount("/sys/class/gpio", "/sys/class/gpio"),)
    assert not gps.pool and gps.needs_sysfs and not gps.plain
    assert pool.pool and pool.name == "usb-serial" and pool.attributes == (("idVendor", "10c4"),)
    assert config.needs_sysfs
    assert config.warnings == ()


def test_plain_rules_read_no_sysfs_and_keep_their_meaning() -> None:
    config = parse_config("- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n", "c")
    [rule] = config.rules
    assert rule.plain and not rule.needs_sysfs and not config.needs_sysfs
    assert config.first_match("ttyUSB3") is rule


def test_devicematch_and_attributes_together() -> None:
    config = parse_config('- {devicematch: ^ttyUSB, attributes: {idVendor: "0403"}, nummaxdevices: 1}', "c")
    [rule] = config.rules
    assert rule.matches("ttyUSB0") and not rule.matches("ttyACM0")
    assert rule.attributes == (("idVendor", "0403"),)


def test_name_templates_record_their_fields() -> None:
    rule = parse_config("- {name: 'gps-{serial}', subsystem: tty, nummaxdevices: 1}", "c").rules[0]
    assert rule.fields == ("serial",) and rule.needs_sysfs


def test_nvidia_gpu_keyword_is_a_rule_of_its_own() -> None:
    config = parse_config("- devicematch: ^video[0-9]*$\n  nummaxdevices: 20\n"
                          "- devicematch: nvidia-gpu\n  nummaxdevices: 1\n", "c")
    gpu = config.rules[1]
    assert gpu.nvidia and gpu.regex is None and not gpu.matches("nvidia-gpu")
    assert config.needs_sysfs
    assert config.warnings == ()  # 2.0 warned it was unsupported


@pytest.mark.parametrize(("text", "message"), [
    ('- {attributes: {idVendor: 0403}, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: attribute 'idVendor' must be a quoted string, got '0403'; "
     "write idVendor: \"0403\" (unquoted, YAML may read 0403 as the number 259)"),
    ('- {attributes: {idvendor: "0403"}, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: unknown attribute 'idvendor'; did you mean 'idVendor'? "
     "sysfs attribute names are case-sensitive"),
    ('- {attributes: {"../x": "1"}, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: '../x' is not a sysfs attribute name (letters, digits, '_', '.', ':' and "
     "'-' only)"),
    ('- {attributes: {}, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: the rule has nothing to match: 'attributes' is empty and there is no "
     "'devicematch' or 'subsystem'; add e.g. attributes: {idVendor: \"0403\"}"),
    ('- {attributes: [idVendor], nummaxdevices: 1}',
     "conf.yaml:1: rule 1: 'attributes' must be a mapping of sysfs attribute to value, "
     "e.g. attributes: {idVendor: \"0403\", idProduct: \"6001\"}"),
    ('- {subsystem: 5, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: 'subsystem' must be a string (got '5'); quote it, e.g. subsystem: tty"),
    ('- {subsystem: "", nummaxdevices: 1}',
     "conf.yaml:1: rule 1: 'subsystem' is empty; give a value, e.g. subsystem: tty"),
    ('- {subsystem: tty, pool: yes please, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: 'pool' must be true or false, got 'yes please'"),
    ('- {subsystem: tty, pool: true, nummaxdevices: 1}',
     "conf.yaml:1: rule 1: 'pool: true' needs a fixed 'name' (e.g. name: usb-serial): a pool is one "
     "resource whose members are the matching devices"),
    ("- {subsystem: tty, pool: true, name: 'p-{serial}', nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'pool: true' needs a fixed 'name' (e.g. name: usb-serial): a pool is one "
     "resource whose members are the matching devices"),
    ("- {subsystem: tty, name: 'gps-{serial', nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'name' 'gps-{serial' has an unbalanced brace; write fields as {serial}"),
    ("- {subsystem: tty, name: 'gps-{a/b}', nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'name' 'gps-{a/b}': {a/b} is not an attribute name"),
    ("- {subsystem: tty, name: 'my gps', nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'name' 'my gps' may hold only letters, digits, '_', '.', '-' and "
     "{attribute} fields"),
    ("- {subsystem: tty, name: '-gps', nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'name' '-gps' would be rejected by the kubelet: it must start and end with a "
     "letter or digit"),
    ("- {subsystem: tty, name: " + "g" * 64 + ", nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'name' '" + "g" * 64 + "' would be rejected by the kubelet: it is 64 "
     "characters long and the kubelet allows at most 63"),
    ("- {subsystem: tty, containerpath: dev/gps, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'containerpath' 'dev/gps' must be an absolute path, e.g. /dev/gps"),
    ("- {subsystem: tty, containerpath: /dev/../etc/passwd, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'containerpath' '/dev/../etc/passwd' must be a plain absolute path without "
     "'..', '.', '//' or a trailing '/'"),
    ("- {subsystem: tty, containerpath: /proc/gps, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'containerpath' '/proc/gps' is under /proc, which is not allowed here"),
    ("- {subsystem: tty, env: {1X: a}, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: env: '1X' is not a variable name (letters, digits and '_', not starting with "
     "a digit)"),
    ("- {subsystem: tty, env: {BAUD: 9600}, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: env: BAUD must be a quoted string, got '9600'; write BAUD: \"9600\""),
    ("- {subsystem: tty, env: {SMARTER_DEVICES_GPS: x}, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: env: SMARTER_DEVICES_GPS starts with SMARTER_DEVICES_, which the daemon sets "
     "itself (which devices a container got); choose another name"),
    ("- {subsystem: tty, env: [A], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'env' must be a mapping of variable to value, e.g. env: {GPS_BAUD: \"9600\"}"),
    ("- {subsystem: tty, mounts: /sys, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'mounts' must be a list, e.g. mounts: [{hostpath: /sys/class/gpio, "
     "containerpath: /sys/class/gpio}]"),
    ("- {subsystem: tty, mounts: [{hostpath: /proc/1, containerpath: /x}], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'hostpath' '/proc/1' is under /proc, which is not allowed here"),
    ("- {subsystem: tty, mounts: [{hostpath: /dev, containerpath: /x}], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'hostpath' '/dev' is under /dev, which is not allowed here"),
    ("- {subsystem: tty, mounts: [{hostpath: /var/lib/kubelet/pods, containerpath: /x}], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'hostpath' '/var/lib/kubelet/pods' is under /var/lib/kubelet, which is not "
     "allowed here"),
    ("- {subsystem: tty, mounts: [{hostpath: /opt/../etc, containerpath: /x}], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'hostpath' '/opt/../etc' must be a plain absolute path without '..', '.', "
     "'//' or a trailing '/'"),
    ("- {subsystem: tty, mounts: [{hostpath: /usr/share/x}], nummaxdevices: 1}",
     "conf.yaml:1: rule 1: mount needs containerpath, e.g. mounts: [{hostpath: /sys/class/gpio, "
     "containerpath: /sys/class/gpio}]"),
    ("- {subsystem: tty, containerpath: /dev/x, mounts: [{hostpath: /usr/share/x, containerpath: /dev/x}], "
     "nummaxdevices: 1}",
     "conf.yaml:1: rule 1: container path /dev/x is used twice in this rule; give each mount and the "
     "device its own path"),
    ("- {devicematch: nvidia-gpu, name: gpu, nummaxdevices: 1}",
     "conf.yaml:1: rule 1: 'devicematch: nvidia-gpu' is the original's GPU keyword and takes only "
     "'nummaxdevices'; remove 'name'"),
])
def test_bad_values_get_one_clear_error(text: str, message: str) -> None:
    assert one_error(text) == message


def test_unknown_mount_key_suggests_the_closest() -> None:
    problems = errors("- subsystem: tty\n  nummaxdevices: 1\n  mounts:\n"
                      "    - {hostpth: /opt/x, containerpath: /x}\n")
    assert problems[0] == "conf.yaml:4: rule 1: unknown key 'hostpth'; did you mean 'hostpath'?"


def test_unknown_rule_key_suggests_the_new_keys_too() -> None:
    assert errors("- {subsystem: tty, atributes: {a: b}, nummaxdevices: 1}")[0] == \
        "conf.yaml:1: rule 1: unknown key 'atributes'; did you mean 'attributes'?"


def test_two_rules_with_one_fixed_name_or_container_path() -> None:
    problems = errors("- {name: gps, subsystem: tty, nummaxdevices: 1, containerpath: /dev/gps}\n"
                      "- {name: gps, devicematch: ^ttyACM0$, nummaxdevices: 1}\n"
                      "- {devicematch: ^ttyACM1$, nummaxdevices: 1, containerpath: /dev/gps}\n")
    assert problems == [
        "conf.yaml:2: rule 2: name 'gps' is also the name of rule 1 (line 1); one resource cannot come "
        "from two rules (give one of them 'pool: true' and merge them, or another name)",
        "conf.yaml:3: rule 3: container path /dev/gps is also used by rule 1 (line 1); a container given "
        "both would see one on top of the other",
    ]


def test_lines_point_at_the_bad_value_in_block_style() -> None:
    problems = errors(GPS.replace('idProduct: "6001"', "idProduct: 6001"))
    assert problems == ["conf.yaml:5: rule 1: attribute 'idProduct' must be a quoted string, got '6001'; "
                        "write idProduct: \"6001\" (unquoted, YAML may read 0403 as the number 259)"]


def test_selectors_keep_resources_of_unchanged_rules_across_reloads() -> None:
    old = parse_config(GPS, "a").rules[0]
    same = parse_config("- {devicematch: ^x$, nummaxdevices: 1}\n" + GPS.replace("nummaxdevices: 1",
                                                                                  "nummaxdevices: 2", 1), "b")
    changed = parse_config(GPS.replace('"A50285BI"', '"OTHER"'), "c")
    assert same.selects(old, "ttyUSB0")
    assert not changed.selects(old, "ttyUSB0")


POOL = "- {name: serial, pool: true, subsystem: tty, nummaxdevices: 1, containerpath: /dev/serial}\n"


@pytest.mark.parametrize(("text", "message"), [
    (POOL + "- {devicematch: ^gps$, nummaxdevices: 1, containerpath: /dev/serial1}\n",
     "conf.yaml:2: rule 2: container path /dev/serial1 is where pool rule 1 (line 1, containerpath "
     "/dev/serial) puts its device number 1; a container given both would see one on top of the "
     "other: use a path that is not /dev/serial followed by digits"),
    (POOL + "- {devicematch: ^x$, nummaxdevices: 1,\n"
     "   mounts: [{hostpath: /sys/class/gpio, containerpath: /dev/serial0/gpio}]}\n",
     "conf.yaml:2: rule 2: container path /dev/serial0/gpio is where pool rule 1 (line 1, containerpath "
     "/dev/serial) puts its device number 0; a container given both would see one on top of the "
     "other: use a path that is not /dev/serial followed by digits"),
    ("- {devicematch: ^gps$, nummaxdevices: 1, containerpath: /dev/serial12}\n" + POOL,
     "conf.yaml:2: rule 2: pool containerpath /dev/serial puts its device number 12 at /dev/serial12, "
     "which rule 1 (line 1) uses; a container given both would see one on top of the other: give the "
     "pool another containerpath, e.g. /dev/serial-"),
    (POOL.replace("}\n", ", mounts: [{hostpath: /sys/class/gpio, containerpath: /dev/serial3}]}\n"),
     "conf.yaml:1: rule 1: mount container path /dev/serial3 is where this pool (containerpath "
     "/dev/serial) puts its device number 3; mount it at a path that is not /dev/serial followed by "
     "digits"),
    (POOL + "- {name: other, pool: true, subsystem: tty, nummaxdevices: 1, containerpath: /dev/serial2}\n",
     "conf.yaml:2: rule 2: pool containerpaths /dev/serial (rule 1) and /dev/serial2 (rule 2) overlap: "
     "/dev/serial20 is device 0 of one and device 20 of the other (rule 1, line 1); give one pool a "
     "containerpath that does not end in a digit, e.g. /dev/serial2-"),
    ("- {name: gps-a, subsystem: tty, nummaxdevices: 1}\n- {name: gps_a, subsystem: tty, nummaxdevices: 1}\n",
     "conf.yaml:2: rule 2: SMARTER_DEVICES_GPS_A would be set by both name 'gps_a' and name 'gps-a' of "
     "rule 1 (line 1); a container given both sees one value. Rename one of them: names that differ "
     "only in '-', '.', '_' or case make one variable, and a pool NAME also sets NAME_IDS"),
    ("- {name: gps-ids, subsystem: tty, nummaxdevices: 1}\n"
     "- {name: gps, pool: true, subsystem: tty, nummaxdevices: 1}\n",
     "conf.yaml:2: rule 2: SMARTER_DEVICES_GPS_IDS would be set by both pool 'gps' (the IDs it hands "
     "over) and name 'gps-ids' of rule 1 (line 1); a container given both sees one value. Rename one "
     "of them: names that differ only in '-', '.', '_' or case make one variable, and a pool NAME also "
     "sets NAME_IDS"),
    ("- {name: gps, pool: true, subsystem: tty, nummaxdevices: 1}\n"
     "- {name: gps.ids, subsystem: tty, nummaxdevices: 1}\n",
     "conf.yaml:2: rule 2: SMARTER_DEVICES_GPS_IDS would be set by both name 'gps.ids' and pool 'gps' "
     "(the IDs it hands over) of rule 1 (line 1); a container given both sees one value. Rename one "
     "of them: names that differ only in '-', '.', '_' or case make one variable, and a pool NAME also "
     "sets NAME_IDS"),
])
def test_collisions_in_what_a_container_gets_are_refused(text: str, message: str) -> None:
    """Pool numbering (/dev/serial0, /dev/serial1, ...) against other paths, and names that make
    one variable, were accepted: a container given both saw one thing on top of the other."""
    assert errors(text) == [message]


@pytest.mark.parametrize("text", [
    POOL + "- {devicematch: ^gps$, nummaxdevices: 1, containerpath: /dev/serial-gps}\n",
    POOL + "- {devicematch: ^gps$, nummaxdevices: 1, containerpath: /dev/serialx1}\n",
    POOL + "- {name: other, pool: true, subsystem: tty, nummaxdevices: 1, containerpath: /dev/serial-b}\n",
    "- {name: gps-a, subsystem: tty, nummaxdevices: 1}\n- {name: gps-b, subsystem: tty, nummaxdevices: 1}\n",
    "- {name: gps, pool: true, subsystem: tty, nummaxdevices: 1}\n- {name: gps-id, subsystem: tty, "
    "nummaxdevices: 1}\n",
    "- {name: 'gps-{serial}', subsystem: tty, nummaxdevices: 1}\n- {name: 'gps_{serial}', subsystem: "
    "tty, nummaxdevices: 1}\n",  # known only on the node
])
def test_near_collisions_are_fine(text: str) -> None:
    parse_config(text, "conf.yaml")


def test_the_config_check_computes_variables_as_both_modes_do() -> None:
    from smarter_device_manager.dra.devices import env_name as dra_env_name
    from smarter_device_manager.handover import env_name
    from smarter_device_manager.rulekeys import ENV_PREFIX, variable_part

    for name in ("gps", "usb-serial", "a.b_c-D", "net_tun", "x9"):
        assert ENV_PREFIX + variable_part(name) == env_name(f"smarter-devices/{name}") \
            == dra_env_name("smarter-devices", name)

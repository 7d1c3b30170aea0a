#!/usr/bin/env bash
# What the tests need from the system beyond the virtualenv, for ./scripts/test.sh (and so for CI,
# whose .ci/run calls it): Podman and busybox-static for the CDI tests that run a real container,
# and the CDI spec's JSON schema. Prints `export SDM_CDI_SCHEMA_DIR=...` for the caller to eval;
# everything else goes to stderr.
#
# As root with apt-get, missing packages are installed (podman: about 60 s on a bare Debian 12).
# The schema comes from Debian's Go source package of the CDI library (0.5.2, the generation
# Podman 4.3 uses); installing that package would pull 76 Go -dev packages and systemd for two
# JSON files, so its .deb is only downloaded and unpacked, outside the repo, in a cache
# (/var/cache/sdm-ci as root, else ~/.cache/sdm-ci). SDM_TEST_NO_INSTALL=1 installs nothing;
# what is then missing makes its tests skip (or fail under CI=true).
set -euo pipefail
CDI_PKG=golang-github-container-orchestrated-devices-container-device-interface-dev
CDI_SCHEMA=usr/share/gocode/src/github.com/container-orchestrated-devices/container-device-interface/schema
updated=
apt_update() { [ -n "$updated" ] || { apt-get update -qq >&2; updated=1; }; }
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${SDM_TEST_NO_INSTALL:-}" != 1 ]; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

missing=()
command -v podman >/dev/null || missing+=(podman)
installed busybox-static || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    if can_install; then
        echo "test-deps: installing ${missing[*]} (the CDI tests run a real container)" >&2
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "test-deps: ${missing[*]} not installed; the tests that need them will skip" >&2
    fi
fi

if [ -n "${SDM_CDI_SCHEMA_DIR:-}" ] && [ -f "$SDM_CDI_SCHEMA_DIR/schema.json" ]; then
    dir=$SDM_CDI_SCHEMA_DIR
elif [ -f "/$CDI_SCHEMA/schema.json" ]; then
    dir=/$CDI_SCHEMA
else
    if [ "$(id -u)" = 0 ]; then cache=/var/cache/sdm-ci/$CDI_PKG; else cache=${XDG_CACHE_HOME:-$HOME/.cache}/sdm-ci/$CDI_PKG; fi
    dir=$cache/$CDI_SCHEMA
    if [ ! -f "$dir/schema.json" ] && command -v apt-get >/dev/null && [ "${SDM_TEST_NO_INSTALL:-}" != 1 ]; then
        [ "$(id -u)" != 0 ] || apt_update
        tmp=$(mktemp -d)
        if (cd "$tmp" && apt-get download -qq "$CDI_PKG" >/dev/null 2>&1); then
            mkdir -p "$cache"
            dpkg-deb -x "$tmp"/"$CDI_PKG"_*.deb "$cache"
        fi
        rm -rf "$tmp"
    fi
fi
if [ -f "$dir/schema.json" ]; then
    printf 'export SDM_CDI_SCHEMA_DIR=%q\n' "$dir"
else
    echo "test-deps: the CDI JSON schema ($CDI_PKG) could not be fetched; its tests will skip" >&2
fi

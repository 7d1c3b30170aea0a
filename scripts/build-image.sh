#!/bin/sh
# Build the image for one or more platforms on a machine without Docker or a registry, with the
# buildah/podman/qemu tools of ../shared/tools/image (see docs/image.md), and save each as a
# docker-archive in dist/ (for `podman load`, `ctr images import`, load-realk8s.sh).
#
#   scripts/build-image.sh [PLATFORM...]      default: linux/amd64
#   scripts/build-image.sh all                 the release's platforms (PLATFORMS below, the same
#                                              list as .github/workflows/release.yml: a test checks)
#
# Images: localhost/smarter-device-manager:dev (native), :dev-arm64, :dev-armhf, :dev-armel.
# linux/arm/v6 is built from Debian's armel (ARMv5 EABI soft-float, runs on ARMv6: Pi 1, Zero),
# as `buildx --platform linux/arm/v6` resolves debian:trixie-slim to its arm/v5 (armel) image.
# Needs the trixie bases: SUITE=trixie ../shared/tools/image/make-base.sh [arm64 armhf armel]
# (docs/image.md: armhf/armel need MIRROR set to the archive here).
set -eu
cd "$(dirname "$0")/.."
TOOLS=${IMAGE_TOOLS:-../shared/tools/image}
[ -x "$TOOLS/build.sh" ] || { echo "no $TOOLS/build.sh (set IMAGE_TOOLS)" >&2; exit 2; }
export SUITE=trixie
[ -x /usr/sbin/runc ] && export BUILDAH_RUNTIME=${BUILDAH_RUNTIME:-/usr/sbin/runc}
PLATFORMS="linux/amd64 linux/arm64 linux/arm/v7 linux/arm/v6"
[ $# -gt 0 ] || set -- linux/amd64
# shellcheck disable=SC2086
[ "$*" = all ] && set -- $PLATFORMS
mkdir -p dist
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_hash=$(python3 scripts/source-hash.py)
for platform in "$@"; do
    case "$platform" in
        linux/arm/v6) bplatform=linux/arm/v5 suffix=armel ;;
        linux/arm/v5) bplatform=linux/arm/v5 suffix=armel ;;
        linux/arm/v7) bplatform=linux/arm/v7 suffix=armhf ;;
        *) bplatform=$platform suffix=${platform##*/} ;;
    esac
    start=$(date +%s)
    "$TOOLS/build.sh" . --platform "$bplatform" --tag localhost/smarter-device-manager:dev \
        --out "dist/smarter-device-manager-$suffix.tar" -- \
        --build-arg VERSION="$version" --build-arg REVISION="$revision" \
        --build-arg SOURCE_HASH="$source_hash"
    echo "== $platform: built and saved in $(( $(date +%s) - start )) s"
done

# smarter-device-manager container image. How to build, check and run it: docs/image.md.
#
# One Dockerfile for linux/amd64, linux/arm64, linux/arm/v7 and linux/arm/v6 (Debian's armhf and
# armel). The builder is debian:trixie-slim with Debian's own python3 (3.13); the runtime is
# distroless-style: FROM scratch plus only the files the daemon can ever use, picked by
# scripts/image-rootfs.py (the interpreter and the libraries it loads, the part of the standard
# library and of the venv that the package's imports can reach, bytecode for what it really
# imports). No shell, no package manager, no pip. docs/image.md compares this with a slim
# Debian runtime stage (measured: 4-5x larger) and says why it was chosen.

# ---------------------------------------------------------------------------------------------
# Stage 1: builder. The venv at /opt/venv, then the runtime's root filesystem in /rootfs.
# ---------------------------------------------------------------------------------------------
# The release workflow pins this tag to the digest it resolved (buildx --build-context) and
# records it in the image's org.opencontainers.image.base.digest label.
FROM debian:trixie-slim AS builder

# openssl (the command, builder only): scripts/image-rootfs.py makes a certificate with it, to
# run `dra` over TLS as on a real cluster. Debian's package versions are not pinned on purpose:
# trixie(-security) replaces them in place, so a pinned version stops building at the next
# point release. The base digest is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv openssl \
 && rm -rf /var/lib/apt/lists/*

# PyPI has no 32-bit ARM wheels for PyYAML: pip builds it from source there. Keep that a
# pure-Python build, in seconds, with no gcc/libyaml: PYYAML_FORCE_LIBYAML=0 skips PyYAML's
# optional C extension. MULTIDICT_NO_EXTENSIONS=1 is multidict's switch for the same, should pip
# ever build it from source.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYYAML_FORCE_LIBYAML=0 \
    MULTIDICT_NO_EXTENSIONS=1

RUN python3 -m venv /opt/venv

WORKDIR /build

# Runtime deps first (grpclib and PyYAML, straight from pyproject.toml's exact pins; their own
# dependencies pinned by constraints.txt), so this layer stays cached while only src/ changes.
# No protobuf: the daemon encodes the device-plugin API's messages itself.
# multidict comes from its pure-Python wheel (py3-none-any) on every architecture: under qemu an
# arm/v6 (armel) build sees an armv7l CPU, and pip would take the manylinux armv7l wheel, whose
# hard-float extension armel's loader cannot load. grpclib's use of it is a few headers per call;
# the C extension saved nothing measurable (docs/image.md) and cost 1.5 MB.
# PyYAML's C extension goes too: the daemon parses with the pure-Python SafeLoader (it needs
# yaml.compose's line marks), so _yaml was never used, only imported (2.6 MB on disk, mapped into
# every daemon). Every architecture gets the same pure-Python PyYAML and multidict.
COPY pyproject.toml constraints.txt ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' >requirements.txt \
 && /opt/venv/bin/pip download --no-cache-dir --no-deps --only-binary=:all: --platform any \
      -c constraints.txt -d /tmp/pure multidict \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile -c constraints.txt /tmp/pure/multidict-*-py3-none-any.whl -r requirements.txt \
 && rm -rf /tmp/pure /opt/venv/lib/python3*/site-packages/_yaml \
           /opt/venv/lib/python3*/site-packages/yaml/_yaml.* \
           /opt/venv/lib/python3*/site-packages/yaml/cyaml.py

# Then the package itself (pure Python, nothing generated at build time), pip and setuptools
# out of the venv, and the runtime's root filesystem assembled in /rootfs (the script runs the
# CLI's subcommands, serve and dra included, to find what is really imported: a smoke test of
# the build; dra runs against tests/fake_apiserver.py, the one test file in the context).
COPY . ./
RUN /opt/venv/bin/pip install --no-cache-dir --no-compile --no-deps . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/python scripts/image-rootfs.py /rootfs \
 && mkdir -p /rootfs/root/config \
 && cp src/smarter_device_manager/default_config.yaml /rootfs/root/config/conf.yaml

# ---------------------------------------------------------------------------------------------
# Stage 2: runtime. Nothing but /rootfs.
# ---------------------------------------------------------------------------------------------
FROM scratch

COPY --from=builder /rootfs /

ARG VERSION=2.2.0
ARG REVISION=unknown
# What the image was built from (scripts/source-hash.py): the built-image tests run only on a match.
ARG SOURCE_HASH=unknown
ARG SOURCE=https://github.com/smarter-project/smarter-device-manager
LABEL org.opencontainers.image.title="smarter-device-manager" \
      org.opencontainers.image.description="Kubernetes device plugin that hands Linux device nodes (serial, I2C, SPI, GPIO, video, sound, TUN...) to containers without privileged pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}/blob/main/docs/deployment.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.smarter-devices.source-hash="${SOURCE_HASH}"

# PYTHONDONTWRITEBYTECODE: every module the daemon imports already has its .pyc (unchecked-hash,
# made in the builder), so Python never needs to write one; this makes sure it never tries
# (the root filesystem is read-only under readOnlyRootFilesystem anyway). PYTHONUNBUFFERED: log
# lines reach `kubectl logs` at once.
ENV PATH=/opt/venv/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The rules the daemon reads by default (/root/config/conf.yaml, copied in the builder). A
# ConfigMap mounted at /root/config replaces it; with no file there at all the daemon falls back
# to the same rules embedded in the package.
#
# No USER: the daemon creates its sockets in the kubelet's device-plugin dir and connects to
# kubelet.sock, both root's on the node (0750/0755 dir, 0755 socket). It needs uid 0 there but no
# capability at all: run it with capabilities drop [ALL], readOnlyRootFilesystem and
# allowPrivilegeEscalation false (docs/image.md says what was tried as non-root). No HEALTHCHECK:
# Kubernetes probes /healthz and /readyz.
WORKDIR /root
ENTRYPOINT ["smarter-device-manager"]
CMD ["serve"]

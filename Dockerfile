# smarter-device-manager container image. How to build, check and run it: docs/image.md.
#
# One Dockerfile for linux/amd64, linux/arm64, linux/arm/v7 and linux/arm/v6. Both stages are
# debian:bookworm-slim with Debian's own python3 (3.11), so the venv made in the builder runs
# unchanged in the runtime stage (same interpreter path, same ABI) on every architecture, and
# no stage needs a compiler.

# ---------------------------------------------------------------------------------------------
# Stage 1: builder. A venv at /opt/venv with the pinned runtime deps and the package, compiled
# to bytecode, with pip and setuptools removed again.
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS builder

# Debian's package versions are not pinned on purpose: bookworm(-security) replaces them in
# place, so a pinned version stops building at the next point release. The suite is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# PyPI has no 32-bit ARM wheels for PyYAML (nor, for some releases, multidict): pip builds
# those from source there. Keep that a pure-Python build, in seconds, with no gcc/libyaml:
# PYYAML_FORCE_LIBYAML=0 skips PyYAML's optional C extension, MULTIDICT_NO_EXTENSIONS=1 is
# multidict's switch for the same. amd64/arm64 get binary wheels and ignore both variables.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYYAML_FORCE_LIBYAML=0 \
    MULTIDICT_NO_EXTENSIONS=1

RUN python3 -m venv /opt/venv

WORKDIR /build

# Runtime deps first (grpclib and PyYAML, straight from pyproject.toml's exact pins; their own
# dependencies pinned by constraints.txt), so this layer stays cached while only src/ changes.
# No protobuf: the daemon encodes the device-plugin API's messages itself
# (smarter_device_manager/api/messages.py); protobuf is only the tests' reference.
COPY pyproject.toml constraints.txt ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' >requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile -c constraints.txt -r requirements.txt

# Then the package itself (pure Python, nothing generated at build time: no protoc). pip and
# setuptools leave the venv afterwards: the runtime never installs anything.
# Bytecode: compiled here, once, for every module in the venv ("unchecked-hash" .pyc files are
# used as they are, whatever the source file's mtime turns out to be after COPY), so start-up
# on a Raspberry Pi does not recompile anything and nothing needs to be written at runtime.
COPY . ./
RUN /opt/venv/bin/pip install --no-cache-dir --no-compile --no-deps . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib \
 && /opt/venv/bin/smarter-device-manager --version

# ---------------------------------------------------------------------------------------------
# Stage 2: runtime. Debian's python3 (no pip, no compilers) + the venv + the default config.
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# Debian's postinst precompiles the standard library's bytecode in this same layer.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old

ARG VERSION=2.0.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="smarter-device-manager" \
      org.opencontainers.image.description="Kubernetes device plugin that hands Linux device nodes (serial, I2C, SPI, GPIO, video, sound, TUN...) to containers without privileged pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# PYTHONDONTWRITEBYTECODE: every module the daemon imports already has its .pyc (venv: builder
# stage; stdlib: Debian's postinst above), so Python never needs to write one; this makes sure
# it never tries, e.g. into /root or the venv, which are read-only under
# readOnlyRootFilesystem anyway. PYTHONUNBUFFERED: log lines reach `kubectl logs` at once.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=builder /opt/venv /opt/venv

# The rules the daemon reads by default. A ConfigMap mounted at /root/config replaces it; with
# no file there at all the daemon falls back to the same rules embedded in the package.
COPY src/smarter_device_manager/default_config.yaml /root/config/conf.yaml

# No USER: the daemon creates its sockets in the kubelet's device-plugin dir, which root owns
# (0750 or 0755) on the node. It needs uid 0 there but no capability at all: run it with
# capabilities drop [ALL], readOnlyRootFilesystem and allowPrivilegeEscalation false
# (docs/image.md). It writes nothing inside the image.
WORKDIR /root
ENTRYPOINT ["smarter-device-manager"]
CMD ["serve"]

"""Regenerate the protobuf modules the tests use as the reference implementation.

The daemon does not use generated code at run time (``api/messages.py`` is a
small hand-written codec; docs/decisions.md says why). protoc's output from
``api/*.proto`` is the oracle: the kubelet stand-in speaks it, and
``tests/test_api.py`` checks our codec against it. The output is committed in
``tests/`` and must be reproducible: run this with the pinned ``grpcio-tools``
from the ``test`` extra; a test fails when the committed files drift.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "src" / "smarter_device_manager" / "api"
PROTOS = ("deviceplugin.proto", "dra.proto", "pluginregistration.proto", "drahealth_v1alpha1.proto",
          "drahealth_v1.proto")
OUT = ROOT / "tests"
OUTPUTS = tuple(f"{proto[:-len('.proto')]}{suffix}" for proto in PROTOS
                for suffix in ("_pb2.py", "_pb2.pyi", "_grpc.py"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with grpclib's plugin into ``out_dir``."""
    plugin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{plugin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{API}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpclib_python_out={out_dir}", *(str(API / proto) for proto in PROTOS),
        ],
        check=True,
        env=env,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            shutil.copy(Path(tmp) / name, OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

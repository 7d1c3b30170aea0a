"""Regenerate the kubelet API modules from ``api/deviceplugin.proto``.

Why a script: the generated code is committed (the image must not need protoc),
so it has to be reproducible. Run with the pinned ``grpcio-tools`` from the
``test`` extra; ``tests/test_api_generated.py`` fails when the committed files
drift from what this produces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO = "smarter_device_manager/api/deviceplugin.proto"
OUTPUTS = ("deviceplugin_pb2.py", "deviceplugin_pb2.pyi", "deviceplugin_grpc.py")


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with grpclib's plugin into ``out_dir``."""
    plugin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{plugin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{SRC}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpclib_python_out={out_dir}", str(SRC / PROTO),
        ],
        check=True,
        env=env,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            generated = Path(tmp) / "smarter_device_manager" / "api" / name
            shutil.copy(generated, SRC / "smarter_device_manager" / "api" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

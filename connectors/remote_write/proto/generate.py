"""Regenerate the ``*_pb2.py`` modules (and ``.pyi`` stubs) from the ``.proto`` files beside this one.

Run from the repository root: ``python -m connectors.remote_write.proto.generate`` (needs grpcio-tools;
the generated modules do not). protoc stamps its own protobuf version into the modules and makes them refuse
an older runtime; that check is stripped so they load with any protobuf >= 5.26, the project's floor (the
modules only use the ``builder`` API, which that version already has). The stubs get a mypy comment for the
one strict check protoc's stubs fail (bare ``Mapping`` in constructor signatures).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
_VERSION_CHECK = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n"
)

_STUB_HEADER = '# mypy: disable-error-code="type-arg"\n'


def main() -> None:
    protos = sorted(p.relative_to(ROOT).as_posix() for p in HERE.glob("*.proto"))
    outputs = [f"-I{ROOT}", f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *outputs, *protos], check=True, cwd=ROOT)
    for module in HERE.glob("*_pb2.py"):
        text, count = _VERSION_CHECK.subn("", module.read_text(encoding="utf-8"))
        if count != 2:
            raise SystemExit(f"{module.name}: protoc's runtime version check not found; update generate.py")
        module.write_text(text, encoding="utf-8")
        print(f"generated {module.relative_to(ROOT)}")
    for stub in HERE.glob("*_pb2.pyi"):
        stub.write_text(_STUB_HEADER + stub.read_text(encoding="utf-8"), encoding="utf-8")


if __name__ == "__main__":
    main()

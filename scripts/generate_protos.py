"""Regenerate the committed gRPC code under clients/ from protos/.

Run with the pinned tool versions (the `dev` extra of pyproject.toml):

    python scripts/generate_protos.py          # rewrite clients/claudeopus/v1
    python scripts/generate_protos.py --check  # exit 1 if the committed code drifted

    python scripts/generate_protos.py --deps   # only stage the imported googleapis protos for buf

Output: *_pb2.py, *_pb2.pyi (mypy-protobuf), *_pb2_grpc.py and *_pb2_grpc.pyi.
google.rpc / google.api come from googleapis-common-protos at run time, never
generated here; protoc reads their .proto files from that installed package, and
every run copies the ones the contract imports to build/protos-deps (not committed),
the second module of buf.yaml, so `buf lint` resolves them without a registry.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from google.rpc import status_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("claudeopus") / "v1"
OUT_ROOT = ROOT / "clients"
# The root of googleapis-common-protos' files (google/rpc/status.proto, ...).
GOOGLEAPIS_ROOT = Path(status_pb2.__file__).resolve().parents[2]
IMPORTED = ("google/rpc/status.proto",)
DEPS_ROOT = ROOT / "build" / "protos-deps"


def stage_dependencies() -> None:
    """Copy the googleapis protos the contract imports to build/protos-deps, where buf reads them."""
    for name in IMPORTED:
        target = DEPS_ROOT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GOOGLEAPIS_ROOT / name, target)


def generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    target = out_root / PACKAGE_DIR
    bindir = Path(sysconfig.get_path("scripts"))
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{GOOGLEAPIS_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)
    init = target / "__init__.py"
    init.write_text('"""Generated gRPC code for claudeopus.v1 (do not edit; see scripts/generate_protos.py)."""\n')


def generated_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / PACKAGE_DIR).glob("*") if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    parser.add_argument("--deps", action="store_true", help="only stage the imported googleapis protos for buf")
    args = parser.parse_args()
    stage_dependencies()
    if args.deps:
        return 0
    if not args.check:
        shutil.rmtree(OUT_ROOT / PACKAGE_DIR, ignore_errors=True)
        generate(OUT_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected, actual = generated_files(fresh), generated_files(OUT_ROOT)
        drift = sorted(expected ^ actual)
        drift += sorted(f for f in expected & actual if not filecmp.cmp(fresh / f, OUT_ROOT / f, shallow=False))
        if drift:
            print("generated code is out of date; run `python scripts/generate_protos.py`:", *drift, sep="\n  ")
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

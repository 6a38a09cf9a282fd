"""The committed generated module matches proto/fedlego.proto."""

import subprocess
import sys
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[1] / "proto"


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp_path}", "fedlego.proto"],
        check=True,
    )
    generated = (tmp_path / "fedlego_pb2.py").read_text()
    committed = (PROTO / "fedlego_pb2.py").read_text()
    assert without_version(generated) == without_version(committed), "run `make proto` and commit the result"


def without_version(text: str) -> list[str]:
    """Generated lines, minus the protoc version stamp."""
    return [line for line in text.splitlines() if not line.startswith("# Protobuf Python Version")]

"""The package type-checks: mypy, configured in pyproject.toml (every function annotated, the
bodies of all of them checked), reports no errors. Runs where mypy is installed (the test extra
installs it, so CI runs it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors(tmp_path):
    pytest.importorskip("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success" in run.stdout


ARRAY_FUNCTIONS = ["conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d", "conv_input_grad", "conv_filter_grad",
                   "describe", "Conv1D", "Conv2D", "Conv3D"]


@pytest.mark.parametrize("name", ARRAY_FUNCTIONS)
def test_public_functions_document_the_filter_shape(name):
    import inspect

    import gpuconv
    doc = inspect.getdoc(getattr(gpuconv, name)) or ""
    assert "(C_out, C_in" in doc, f"{name}'s docstring does not give the filters' shape"

"""README's Python examples run as written (the blocks marked `<!-- test: ... -->`)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"<!-- test: ([\w-]+) -->\s*```python\n(.*?)```", README, re.S)


def test_readme_has_tested_blocks():
    assert {name for name, _ in BLOCKS} >= {"readme-quickstart", "readme-sigpy"}


@pytest.mark.parametrize("name,code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(name, code, monkeypatch):
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    exec(compile(code, f"README.md:{name}", "exec"), {})

"""README's Python examples run as written (the blocks marked `<!-- test: ... -->`)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# <!-- test: NAME --> or <!-- test: NAME (needs MODULE) --> before a ```python block
BLOCKS = re.findall(r"<!-- test: ([\w-]+)(?: \(needs (\w+)\))? -->\s*```python\n(.*?)```",
                    README, re.S)


def test_readme_has_tested_blocks():
    assert {name for name, _, _ in BLOCKS} >= {"readme-quickstart", "readme-sigpy",
                                               "readme-torch"}


def test_readme_pictures_exist():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures
    for path in pictures:
        assert (Path(__file__).resolve().parents[1] / path).is_file(), path


@pytest.mark.parametrize("name,needs,code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(name, needs, code, monkeypatch):
    if needs:
        pytest.importorskip(needs)
    monkeypatch.setenv("GPUCONV_DEVICE", "cpu")
    exec(compile(code, f"README.md:{name}", "exec"), {})

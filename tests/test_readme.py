"""The README stays true: its two commands are the ones the project supports, and every ```python
block runs as written (each in a fresh namespace, in order)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def test_two_commands_at_the_top():
    first = TEXT.index("```bash")
    block = TEXT[first : TEXT.index("```", first + 7)]
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && refcam explain'
        in block
    )
    assert "\npython -m pytest\n" in block


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2 and "refcam.gradcam" in BLOCKS[0] and "refcam.cam" in BLOCKS[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
    exec(
        compile(BLOCKS[index], f"README.md python block {index}", "exec"),
        {"__name__": "__readme__"},
    )
    out = capsys.readouterr().out
    # the printed values the comments promise
    if index == 0:
        assert out.strip() == "(2, 224, 224) 0.0 1.0"
    if index == 1:
        assert out.startswith("[[(282, 'tiger cat', 0.39") and out.rstrip().endswith("(1, 7, 7)")

"""Every Python snippet of the README runs as written (issue 8: a snippet printed a tf.Tensor where its
comment showed a value, and the DP snippet raised NameError)."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, tmp_path):
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(SNIPPETS[index])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, f"README snippet {index} failed:\n{SNIPPETS[index]}\n{result.stderr[-3000:]}"


def test_pond_snippet_prints_what_its_comments_show(tmp_path):
    snippet = next(s for s in SNIPPETS if "from tfe_lite.protocols import Pond" in s)
    script = tmp_path / "pond.py"
    script.write_text(snippet)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600).stdout
    assert "[[7.5]]" in out and "tf.Tensor" not in out
    assert "bytes" in out

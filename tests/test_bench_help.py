"""Every script under benchmarks/ answers --help in full (issue #17: bench_step.py's stopped mid-sentence): it exits
0, and its description, the docstring's first paragraph, is there whole and ends with a full sentence."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("bench_feed_loss.py", "bench_step.py", "bench_loaders.py", "gpu_check_report.py", "gpu_quick.py")
SENTENCE_END = re.compile(r"[.!?][)\"'`]?$")


def words(text: str) -> str:
    return " ".join(text.split())


def test_every_script_is_covered():
    """A new script with a main() is added to SCRIPTS (and so to this test)."""
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if "if __name__ == \"__main__\":" in p.read_text()}
    assert scripts <= set(SCRIPTS) | {"kernel_figures.py"}, scripts - set(SCRIPTS)  # kernel_figures: issue #18's


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_with_the_whole_first_paragraph(script):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    doc = (BENCHMARKS / script).read_text().split('"""')[1]
    first = words(doc.strip().split("\n\n")[0])
    assert SENTENCE_END.search(first), f"{script}: the description ends mid-sentence: ...{first[-60:]!r}"
    assert first in words(result.stdout), f"{script}: --help does not show its whole description"


def test_gpu_check_help_exits_0_and_ends_each_paragraph_with_a_sentence():
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and "quick" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert SENTENCE_END.search(lines[-1].strip()), lines[-1]
    assert "(a)" in result.stdout and "(e)" in result.stdout and "--out DIR" in result.stdout

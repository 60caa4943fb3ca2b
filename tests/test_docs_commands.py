"""Every command the README and docs/ show a user is valid as written (issue #17): each `feed-fast` line (also
under `torchrun ... -m feed_fast.cli`) parses with the CLI's own parser, and a `train` line's config (a file or a
shipped name) with its --set overrides passes the schema; every `make` target named exists; every benchmark
script named exists. Running them is what the rest of the suite does for each command's path (the shipped
configs, the demo, the benchmarks' smoke runs); `make docs-check` runs this file alone."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from feed_fast.cli import build_parser
from feed_fast.config import load_config
from feed_fast.engine.cli import train_overrides

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(page: Path) -> list[str]:
    """Lines of the page's ```bash / ```sh blocks, comments dropped, continuations joined."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def feed_fast_argv(line: str) -> list[str] | None:
    words = shlex.split(line)
    if words and words[0] == "feed-fast":
        return words[1:]
    if "feed_fast.cli" in words:
        return words[words.index("feed_fast.cli") + 1:]
    return None


COMMANDS = [pytest.param(argv, id=f"{page.name}:{' '.join(argv)[:60]}") for page in PAGES
            for line in shell_lines(page) if (argv := feed_fast_argv(line)) is not None]


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 8
    assert any(argv[0] == "train" for argv in (p.values[0] for p in COMMANDS))


@pytest.mark.parametrize("argv", COMMANDS)
def test_each_feed_fast_command_parses_and_its_config_is_valid(argv):
    args = build_parser().parse_args(argv)
    if args.command == "train" and getattr(args, "config", None):
        config = args.config
        if not (ROOT / config).is_file() and "/" in config:
            pytest.skip(f"{config} is a user's own file")
        load_config(ROOT / config if (ROOT / config).is_file() else config, train_overrides(args), check_paths=False)


def test_make_targets_and_scripts_named_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([\w-]+):", makefile))
    for page in PAGES:
        for line in shell_lines(page):
            words = shlex.split(line)
            if words[0] == "make":
                assert words[1] in targets, f"{page.name}: make {words[1]} is not a target"
            for word in words:
                if word.startswith("benchmarks/") and word.endswith((".py", ".sh")):
                    assert (ROOT / word).is_file(), f"{page.name}: {word} does not exist"

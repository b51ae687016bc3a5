"""The README and the guides in docs/ stay true to the code: every relative link points at a file
(and heading) that exists, and every `gptforge CMD --flag` they show is a flag of CMD's parser."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gptforge.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = PAGES + [REPO / "benchmarks" / "README.md"]  # links into benchmarks/ are checked too

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# `gptforge CMD ...` (or `python -m gptforge CMD`, `torchrun ... -m gptforge CMD`) up to the end of
# that command: a comment, a pipe, `&&` or `;`.
COMMAND = re.compile(r"\bgptforge ([A-Za-z]+)((?:[^#|&;`\n]|#(?! ))*)")
# Flags of other programs that the guides show in passing, outside a gptforge command.
FOREIGN = {"--index-url", "--logdir", "--local-dir", "--nproc_per_node", "--standalone", "--nnodes",
           "--node_rank", "--rdzv_backend", "--rdzv_endpoint", "--model", "--model_args", "--tasks",
           "--include_path", "--batch_size", "--jinja", "--scale"}


def prose(text: str) -> str:
    """The text outside code fences (where links and headings live)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_relative_links_resolve():
    broken = []
    for page in LINKED:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def code(text: str) -> list[str]:
    """Every code line (continuations joined) and every inline code span of a page."""
    pieces = []
    for block in FENCE.findall(text):
        pieces += block.replace("\\\n", " ").splitlines()[1:-1]
    pieces += re.findall(r"`([^`\n]+)`", prose(text))
    return pieces


def test_the_commands_shown_exist_with_their_flags():
    commands = subparsers(build_parser())
    every_flag = set().union(*(flags(p) for c in commands.values() for p in [c, *subparsers(c).values()]))
    wrong = []
    for page in PAGES:
        for piece in code(page.read_text()):
            shown = False
            for name, rest in COMMAND.findall(piece):
                shown = True
                if name.isupper():  # `gptforge CMD --help`: a placeholder, not a command
                    continue
                if name not in commands:
                    wrong.append(f"{page.name}: gptforge {name}: no such command")
                    continue
                parser = commands[name]
                actions = subparsers(parser)
                if actions and rest.split()[:1] and rest.split()[0] in actions:
                    parser = actions[rest.split()[0]]
                known = flags(parser)
                wrong += [f"{page.name}: gptforge {name}{rest.rstrip()}: no flag {f}"
                          for f in FLAG.findall(rest) if f not in known]
            if not shown:  # a flag named on its own, e.g. `--max-time 10m`: some command's
                wrong += [f"{page.name}: `{piece}`: no command has {f}"
                          for f in FLAG.findall(piece.split("# ")[0]) if f not in every_flag | FOREIGN]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("text, expected", [("`gptforge train`: pretraining", "gptforge-train-pretraining"),
                                            ("Muon, under FSDP2 (too)", "muon-under-fsdp2-too")])
def test_slug_is_githubs(text, expected):
    assert slug(text) == expected

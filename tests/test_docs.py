"""The docs cannot drift: every command block of README.md and docs/*.md marked runnable runs, and
every relative link points at a file and heading that exist (issue 25).

A fenced block whose info string is ``bash runnable`` (``bash runnable slow``: only with ``-m slow``)
is run with bash (``set -e -o pipefail``) in an empty temporary folder in which the repository's
``configs/``, ``benchmarks/`` and ``launch/`` are linked (the docs' commands are typed from the
repository root), with ``PYTHONPATH`` at this checkout, ``JAX_PLATFORMS=cpu``, ``vstar-jax`` and
``python`` meaning this interpreter, and one compile-cache folder shared by all blocks of the session
(so a block that repeats another's shapes loads instead of compiling). Only commands on the embedded
demo model are marked: no network, checkpoint, GPU, LLM or second host; not the install or the suite.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest
from hostile import env as cli_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
LINKED_DIRS = ("configs", "benchmarks", "launch")  # what the runnable commands read from the repo root
RUN_LANGS = ("bash", "sh")
MARKS = ("runnable", "slow")  # words allowed after the language in an info string
README_MAX_LINES = 60  # "a README that fits in two screens"
BLOCK_TIMEOUT_S = 900

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the opening fence
    info: tuple  # the info string's words
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return bool(self.info) and self.info[0] in RUN_LANGS and "runnable" in self.info[1:]

    @property
    def slow(self) -> bool:
        return "slow" in self.info[1:]


def fenced_blocks(text: str, path: pathlib.Path = REPO / "README.md"):
    """Every fenced code block of a markdown text (CommonMark fences: ``` or ~~~, 3 or more; a closing
    fence of the same character at least as long, nothing after it), with its info string's words."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):
            i += 1
            continue
        fence, start, body = m.group(2), i, []
        i += 1
        while i < len(lines):
            c = _FENCE.match(lines[i])
            if c and c.group(2)[0] == fence[0] and len(c.group(2)) >= len(fence) and not c.group(3).strip():
                break
            body.append(lines[i])
            i += 1
        blocks.append(Block(path, start + 1, tuple(m.group(3).split()), "\n".join(body) + "\n"))
        i += 1
    return blocks


def _all_blocks():
    return [b for p in DOC_FILES for b in fenced_blocks(p.read_text(encoding="utf-8"), p)]


RUNNABLE = [b for b in _all_blocks() if b.runnable]


# ------------------------------------------------------------------ the marker, and the README's shape

def test_fence_parser_finds_marked_blocks_only():
    md = ("text\n```bash runnable\necho a\n```\n````markdown\n```bash runnable\nnot a block\n```\n````\n"
          "~~~bash runnable slow\necho b\n~~~\n```bash\necho c\n```\n```python runnable\nx\n```\n")
    found = [(b.line, b.info, b.text, b.runnable, b.slow) for b in fenced_blocks(md)]
    assert found == [
        (2, ("bash", "runnable"), "echo a\n", True, False),
        (5, ("markdown",), "```bash runnable\nnot a block\n```\n", False, False),
        (10, ("bash", "runnable", "slow"), "echo b\n", True, True),
        (13, ("bash",), "echo c\n", False, False),
        (16, ("python", "runnable"), "x\n", False, False),
    ]


def test_markers_are_spelt_right():
    """A misspelt marker (``runable``, ``bash slow``, ``python runnable``) would quietly turn a block's
    test off: any word after the language must be a known mark, and only shell blocks may carry them."""
    bad = [f"{b.where}: ```{' '.join(b.info)}" for b in _all_blocks()
           if len(b.info) > 1 and (b.info[0] not in RUN_LANGS or any(w not in MARKS for w in b.info[1:])
                                   or "runnable" not in b.info[1:])]
    assert not bad, "unknown code block markers (use ```bash runnable or ```bash runnable slow):\n" + "\n".join(bad)


def test_some_blocks_run_in_ci():
    assert [b for b in RUNNABLE if not b.slow], "no runnable block outside -m slow: the docs are not tested in CI"


def test_readme_starts_with_the_two_commands_and_fits_two_screens():
    """The README's first block is the two commands (generate, then the tests), and .ci/run runs exactly
    the second; the rest of the README stays short (everything else is in docs/)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = fenced_blocks(text)[0]
    assert first.line == 3 and first.info == ("bash",), first
    generate, tests = first.text.strip().split("\n")
    assert "vstar-jax generate" in generate and "python -m pytest" in tests
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().split("\n")
    assert ci[-1] == tests, ".ci/run must run exactly the README's test command"
    assert len(text.split("\n")) <= README_MAX_LINES, f"README.md is over {README_MAX_LINES} lines: move text to docs/"


# ------------------------------------------------------------------ links

_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str):
    """(line number, line) outside fenced blocks, with inline code spans blanked."""
    fenced = set()
    for b in fenced_blocks(text):
        fenced.update(range(b.line, b.line + b.text.count("\n") + 2))
    for n, line in enumerate(text.split("\n"), 1):
        if n not in fenced:
            yield n, re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


def heading_anchors(text: str) -> set:
    """GitHub's anchors of a markdown file's headings: the heading's text without markup, lower case,
    punctuation other than '-' and '_' removed, spaces -> '-'; repeats get -1, -2, ..."""
    seen, out = {}, set()
    fenced = {n for b in fenced_blocks(text) for n in range(b.line, b.line + b.text.count("\n") + 2)}
    for n, line in enumerate(text.split("\n"), 1):
        m = _HEADING.match(line)
        if not m or n in fenced:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link's text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        k = seen.get(slug, 0)
        seen[slug] = k + 1
        out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def test_heading_anchors_follow_github():
    md = "# Many hosts\n## StreamingT2V's CAM and APM (`--long-video streaming:F:C`)\n## Many hosts\n```\n# no\n```\n"
    assert heading_anchors(md) == {"many-hosts", "streamingt2vs-cam-and-apm---long-video-streamingfc", "many-hosts-1"}


def test_relative_links_point_at_files_and_headings():
    bad = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for n, line in _prose_lines(text):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(REPO)}:{n}: ({target})"
                if REPO not in dest.parents and dest != REPO:
                    bad.append(f"{where} points outside the repository")
                elif not dest.exists():
                    bad.append(f"{where} no such file")
                elif anchor and dest.suffix == ".md":
                    if anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
                        bad.append(f"{where} no heading #{anchor} in {dest.relative_to(REPO)}")
                elif anchor and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
                    bad.append(f"{where} an anchor into a file that is not markdown")
    assert not bad, "broken links:\n" + "\n".join(bad)


# ------------------------------------------------------------------ running the blocks

@pytest.fixture(scope="module")
def block_env(tmp_path_factory):
    """The environment every block runs in: this checkout first on PYTHONPATH, CPU, one shared
    compile cache, and ``vstar-jax`` / ``python`` as this interpreter."""
    root = tmp_path_factory.mktemp("docs_env")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    exe = sys.executable
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{exe}" "$@"\n')
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{exe}" "$@"\n')
    (bin_dir / "vstar-jax").write_text(
        f'#!/bin/sh\nexec "{exe}" -c "import sys; sys.argv[0] = \'vstar-jax\'; '
        f'from vstar_jax.cli import main; sys.exit(main())" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return cli_env(PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]), JAX_PLATFORMS="cpu",
                   VSTAR_JAX_CACHE_DIR=str(root / "jax_cache"), MPLBACKEND="Agg")


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.where, marks=[pytest.mark.slow] if b.slow else []) for b in RUNNABLE])
def test_runnable_block(block, block_env, tmp_path):
    for d in LINKED_DIRS:
        (tmp_path / d).symlink_to(REPO / d, target_is_directory=True)
    try:
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=tmp_path, env=block_env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: the block ran over {BLOCK_TIMEOUT_S} s:\n{block.text}")
    if r.returncode != 0:
        pytest.fail(f"{block.where}: the block exited with status {r.returncode}\n--- block ---\n{block.text}"
                    f"--- stderr (end) ---\n{r.stderr[-4000:]}\n--- stdout (end) ---\n{r.stdout[-2000:]}",
                    pytrace=False)

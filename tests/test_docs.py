"""The documentation holds: its examples run, its links resolve, the README stays short.

Examples are the fenced code blocks of README.md and docs/*.md:

- a ```python block runs as a script, in a subprocess with this interpreter;
- a ```bash, ```sh or ```console block runs as one bash script (`set -euo pipefail`; in a console
  block only the `$ ` lines), with this interpreter's bin directory (`darts`, `darts-service`) first
  on PATH.

Each runs in a temporary directory of its own, on one torch thread, with no login and no server
settings from the environment. A block that cannot run here (it needs a server, Docker, or minutes)
carries a marker on the line just before its fence:

    <!-- docs-test: skip (needs a server) -->

No block is skipped silently: a block that is neither runnable nor marked fails the test, and so does
a marker without a reason or without a fence under it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 120
# The first lines of README.md: the two set-up commands, exactly as they are.
README_SETUP_COMMANDS = ("make demo   # ", "make test   # ")
README_SETUP_WITHIN_LINES = 8
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Pages whose code blocks are not examples. Their links are still checked.
NOT_EXAMPLES = {
    "docs/architecture.md": "design notes: its code blocks state internal contracts, not runnable examples",
}
RUNNABLE_LANGUAGES = {"python", "bash", "sh", "console"}
EXAMPLE_TIMEOUT_SECONDS = 120
# Settings of the service and the client that must not leak from the environment into an example.
ENVIRONMENT_DROPPED = {"DATABASE_URL", "REDIS_URL", "DATA_DIR", "ARTIFACT_DIR", "REDIS_PREFIX"}

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<rest>.*?)\s*-->\s*$")
SKIP_MARKER = re.compile(r"^skip \((?P<reason>[^()]*\S[^()]*)\)$")
INLINE_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+).*?\1")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    body: str
    skip_reason: str | None  # the reason of a `docs-test: skip (...)` marker just before the fence

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class MarkdownPage:
    path: Path
    blocks: list[CodeBlock]
    prose: list[tuple[int, str]]  # (1-based line, text) of every line outside code blocks
    problems: list[str]  # markers that are malformed or have no fence under them


def parse_page(path: Path) -> MarkdownPage:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    prose: list[tuple[int, str]] = []
    problems: list[str] = []
    where = path.relative_to(ROOT)
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = FENCE.match(line)
        if opening is None:
            prose.append((index + 1, line))
            marker = MARKER.match(line)
            if marker is not None:
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if SKIP_MARKER.match(marker.group("rest")) is None:
                    problems.append(f"{where}:{index + 1}: not `docs-test: skip (reason)`: {line.strip()}")
                elif FENCE.match(following) is None:
                    problems.append(f"{where}:{index + 1}: a docs-test marker with no code fence under it")
            index += 1
            continue
        fence = opening.group("fence")
        language = opening.group("info").strip().split(" ")[0].lower()
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and closing.strip(fence[0]) == "":
                break
            body.append(lines[end])
            end += 1
        else:
            problems.append(f"{where}:{index + 1}: a code fence that is never closed")
        skip_reason = None
        if index > 0 and (marker := MARKER.match(lines[index - 1])) is not None:
            skip = SKIP_MARKER.match(marker.group("rest"))
            skip_reason = skip.group("reason") if skip else None
        blocks.append(CodeBlock(path, index + 1, language, "\n".join(body) + "\n", skip_reason))
        index = end + 1
    return MarkdownPage(path, blocks, prose, problems)


PAGES = [parse_page(path) for path in DOC_FILES]


def example_pages() -> list[MarkdownPage]:
    return [page for page in PAGES if str(page.path.relative_to(ROOT)) not in NOT_EXAMPLES]


def examples_to_run() -> list[CodeBlock]:
    return [
        block
        for page in example_pages()
        for block in page.blocks
        if block.language in RUNNABLE_LANGUAGES and block.skip_reason is None
    ]


# ------------------------------------------------------------------------------------------ the rules


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    problems = [problem for page in PAGES for problem in page.problems]
    outcomes: Counter[str] = Counter()
    for page in example_pages():
        for block in page.blocks:
            if block.skip_reason is not None:
                outcomes["marked"] += 1
            elif block.language in RUNNABLE_LANGUAGES:
                outcomes["run"] += 1
            else:
                runnable = ", ".join(sorted(RUNNABLE_LANGUAGES))
                problems.append(
                    f"{block.where}: a ```{block.language or '(no language)'} block is neither runnable "
                    f"({runnable}) nor marked `<!-- docs-test: skip (reason) -->`"
                )
    assert not problems, "\n".join(problems)
    total = sum(len(page.blocks) for page in example_pages())
    assert outcomes["run"] + outcomes["marked"] == total
    assert outcomes["run"] >= 5, f"only {outcomes['run']} examples run: {dict(outcomes)}"
    print(f"docs examples: {outcomes['run']} run, {outcomes['marked']} marked as not runnable here")


def test_readme_is_short_and_starts_with_the_setup_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    head = lines[:README_SETUP_WITHIN_LINES]
    for command in README_SETUP_COMMANDS:
        name = command.split("#")[0].strip()
        assert any(line.startswith(command) for line in head), (
            f"README.md's first {README_SETUP_WITHIN_LINES} lines do not give {name!r}"
        )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = INLINE_LINK.sub(lambda link: link.group("text"), heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(page: MarkdownPage) -> set[str]:
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    for _, line in page.prose:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        anchor = github_anchor(heading.group(1))
        anchors.add(anchor if seen[anchor] == 0 else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return anchors


def test_every_relative_link_points_to_an_existing_file() -> None:
    pages = {page.path.resolve(): page for page in PAGES}
    broken: list[str] = []
    checked = 0
    for page in PAGES:
        for number, line in page.prose:
            for link in INLINE_LINK.finditer(INLINE_CODE.sub("", line)):
                target = link.group("target")
                if URL_SCHEME.match(target):
                    continue
                checked += 1
                file_part, _, anchor = target.partition("#")
                file = (page.path.parent / file_part).resolve() if file_part else page.path.resolve()
                where = f"{page.path.relative_to(ROOT)}:{number}"
                if not file.exists():
                    broken.append(f"{where}: {target}: no such file")
                elif anchor and file in pages and anchor not in anchors_of(pages[file]):
                    broken.append(f"{where}: {target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
    assert checked > 0, "no relative link found: is the link pattern still right?"


# ------------------------------------------------------------------------------------ the examples


def example_environment(workdir: Path) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ENVIRONMENT_DROPPED and not name.startswith("DARTS_")
    }
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join([bin_dir, environment.get("PATH", "")])
    environment["OMP_NUM_THREADS"] = "1"
    environment["DARTS_CONFIG_DIR"] = str(workdir / ".config-darts")  # no login: nothing reaches a server
    return environment


def console_commands(body: str) -> str:
    """The commands of a console block: its `$ ` lines and their backslash continuations."""
    commands: list[str] = []
    continued = False
    for line in body.splitlines():
        if continued:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def run_example(block: CodeBlock, workdir: Path) -> subprocess.CompletedProcess[str]:
    if block.language == "python":
        script = workdir / "example.py"
        script.write_text(block.body, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        body = console_commands(block.body) if block.language == "console" else block.body
        script = workdir / "example.sh"
        script.write_text("set -euo pipefail\n" + body, encoding="utf-8")
        command = ["bash", str(script)]
    # A session of its own, so that a timeout stops the example's children too.
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=example_environment(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=EXAMPLE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{block.where}: still running after {EXAMPLE_TIMEOUT_SECONDS} s\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.parametrize("block", examples_to_run(), ids=lambda block: block.where)
def test_example_runs(block: CodeBlock, tmp_path: Path) -> None:
    result = run_example(block, tmp_path)
    assert result.returncode == 0, (
        f"{block.where}: the ```{block.language} example exited {result.returncode}\n"
        f"--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-3000:]}"
    )

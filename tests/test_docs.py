"""The docs are tested where they show code.

Every ```python block of README.md and docs/*.md runs as written, in a temporary folder that holds
`examples/` and with $MASKML_HOME holding stand-in checkpoints under the official file names, so
`maskml.load_model("mobile_sam")` finds its file as it would after a download. A block marked
```python no-test is not run (it must say why, and such blocks stay rare). Every `maskml ...` line of a
```bash block parses; those of a ```bash run block run for real. Every `python benchmarks/...` command
names a script and options that exist, and every relative link points to a file and heading that exist.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from maskml.cli import build_parser
from maskml.zoo import get_entry

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPET_TIMEOUT_S = 600

# the fixtures of conftest.py that write each model's stand-in checkpoint, as (fixture, key or None)
CHECKPOINT_FIXTURES = {
    "mobile_sam": ("sam_checkpoints", "mobile_sam"),
    "sam_vit_b": ("sam_checkpoints", "sam_vit_b"),
    "cutie_small": ("cutie_small_checkpoint", None),
    "sam2.1_hiera_t": ("sam2_checkpoint", None),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    flags: tuple[str, ...]  # the words after the language: "no-test", "run"
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    blocks, opened, body = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if opened is None:
                opened, body = (number, line[3:].split()), []
            else:
                start, words = opened
                blocks.append(Block(path, start, words[0] if words else "", tuple(words[1:]), "\n".join(body) + "\n"))
                opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"{path.relative_to(ROOT)}:{opened[0]}: a code block is never closed"
    return blocks


BLOCKS = [block for path in DOC_FILES for block in code_blocks(path)]
PYTHON_BLOCKS = [b for b in BLOCKS if b.language == "python" and "no-test" not in b.flags]
LEFT_OUT_BLOCKS = [b for b in BLOCKS if b.language == "python" and "no-test" in b.flags]


def shell_lines(block: Block) -> list[str]:
    """The block's commands, each continued line (ending in a backslash) joined to the next."""
    return [line.strip() for line in block.text.replace("\\\n", " ").splitlines() if line.strip()]


def maskml_commands(blocks) -> list[tuple[Block, list[str]]]:
    commands = []
    for block in blocks:
        for line in shell_lines(block):
            words = shlex.split(line, comments=True)
            if words and words[0] == "maskml":
                commands.append((block, words[1:]))
    return commands


BASH_BLOCKS = [b for b in BLOCKS if b.language == "bash"]
CLI_COMMANDS = maskml_commands(BASH_BLOCKS)
RUN_COMMANDS = maskml_commands(b for b in BASH_BLOCKS if "run" in b.flags)


def models_named(texts) -> set[str]:
    names = set()
    for text in texts:
        names.update(re.findall(r"load_model\(\s*[\"']([^\"']+)[\"']", text))
        names.update(re.findall(r"--(?:model|prompter)[ =]([\w.+-]+)", text))
    return names


@pytest.fixture(scope="module")
def maskml_home(request, tmp_path_factory) -> Path:
    """A cache folder with a stand-in checkpoint, under its official file name, for every model the
    runnable snippets and commands name (symlinks to the files conftest.py writes)."""
    home = tmp_path_factory.mktemp("maskml_home")
    run_lines = [" ".join(["maskml", *words]) for _, words in RUN_COMMANDS]
    for name in sorted(models_named([b.text for b in PYTHON_BLOCKS] + run_lines)):
        assert name in CHECKPOINT_FIXTURES, f"the docs run {name}: add its stand-in checkpoint to CHECKPOINT_FIXTURES"
        fixture, key = CHECKPOINT_FIXTURES[name]
        written = request.getfixturevalue(fixture)
        (home / get_entry(name).filename).symlink_to(written[key] if key else written)
    return home


def run_in_folder(args: list[str], folder: Path, home: Path) -> subprocess.CompletedProcess:
    """Run with this checkout's maskml, in `folder`, where `examples/` is this repository's."""
    (folder / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "MASKML_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_block_runs(block, tmp_path, maskml_home):
    script = tmp_path / "snippet.py"
    script.write_text(block.text)
    done = run_in_folder([sys.executable, str(script)], tmp_path, maskml_home)
    assert done.returncode == 0, f"{block} failed:\n{block.text}\n{done.stderr[-3000:]}"


def test_blocks_left_out_are_few_and_say_why():
    assert len(LEFT_OUT_BLOCKS) <= 2, f"too many ```python no-test blocks: {', '.join(map(str, LEFT_OUT_BLOCKS))}"
    for block in LEFT_OUT_BLOCKS:
        assert block.text.startswith("# not run by tests/test_docs.py: "), f"{block}: say first why it is not run"


def test_the_docs_show_code():
    assert len(PYTHON_BLOCKS) >= 5 and len(CLI_COMMANDS) >= 10 and RUN_COMMANDS
    assert {"segment", "track", "demo", "eval", "models"} <= {words[0] for _, words in CLI_COMMANDS}


@pytest.mark.parametrize("block, words", CLI_COMMANDS, ids=[f"{b}:{w[0]}" for b, w in CLI_COMMANDS])
def test_cli_line_parses(block, words, capsys):
    try:
        build_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"{block}: `maskml {shlex.join(words)}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("block, words", RUN_COMMANDS, ids=[f"{b}:{w[0]}" for b, w in RUN_COMMANDS])
def test_cli_line_runs(block, words, tmp_path, maskml_home):
    done = run_in_folder([sys.executable, "-m", "maskml", *words], tmp_path, maskml_home)
    assert done.returncode == 0, f"{block}: `maskml {shlex.join(words)}` failed:\n{done.stderr[-3000:]}"
    args = build_parser().parse_args(words)
    for option in ("out", "overlay", "logits", "probs"):
        if getattr(args, option, None):
            assert (tmp_path / getattr(args, option)).exists(), f"{block}: --{option} {getattr(args, option)} not written"


def benchmark_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, options) of every `python benchmarks/NAME.py ...` in the docs."""
    commands = []
    for path in DOC_FILES:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python (benchmarks/[\w.]+\.py)([^`]*)", text):
            line = text.count("\n", 0, match.start()) + 1
            options = [w.split("=")[0] for w in match.group(2).split() if w.startswith("--")]
            commands.append((f"{path.relative_to(ROOT)}:{line}", match.group(1), options))
    return commands


BENCHMARK_COMMANDS = benchmark_commands()


@pytest.mark.parametrize("script", sorted({script for _, script, _ in BENCHMARK_COMMANDS}))
def test_benchmark_commands_name_real_options(script):
    """Each table's command is one that can be run again: the script exists and takes those options."""
    assert (ROOT / script).is_file(), f"{script} does not exist"
    usage = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=SNIPPET_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert usage.returncode == 0, usage.stderr
    for where, named, options in BENCHMARK_COMMANDS:
        if named == script:
            unknown = [o for o in options if not re.search(rf"{re.escape(o)}\b", usage.stdout)]
            assert not unknown, f"{where}: {script} has no option {', '.join(unknown)}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings (code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.relative_to(ROOT)}: the link {target} leads nowhere"
        if anchor:
            assert anchor in heading_anchors(linked), f"{path.relative_to(ROOT)}: no heading for #{anchor} in {linked.name}"

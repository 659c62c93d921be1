"""The README stays a quick start and the docs stay true: every page is reachable, every relative link and anchor
resolves, and every ``skinray`` example parses with the real command line (a renamed flag breaks a test, not a
reader's night). Fast: no Ray, the CLI parser in-process."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from skinray import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "zsh"}  # every line is a command; other blocks: only `$ ` lines
CONTROL = {"|", "||", "&&", ";", "&", "(", ")"}


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block; a fence may be indented (inside a list item)."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        fence = re.match(r"\s*```\s*([\w+-]*)", line)
        if fence and lang is None:
            lang, body = fence.group(1).lower(), []
        elif fence:
            blocks.append((lang, body))
            lang = None
        elif lang is not None:
            body.append(line.strip())
    return blocks


def prose(text: str) -> str:
    """The text outside fenced code blocks (where links and inline code live)."""
    kept, inside = [], False
    for line in text.splitlines():
        if re.match(r"\s*```", line):
            inside = not inside
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def shell_commands(text: str) -> list[str]:
    """The command lines of a page's code blocks: `\\` continuations joined, `$ ` prompts dropped."""
    commands = []
    for lang, lines in fenced_blocks(text):
        joined, pending = [], ""
        for line in lines:
            if pending or lang in SHELL_LANGS or line.startswith("$ "):
                pending += (" " if pending else "") + line.removeprefix("$ ")
                if pending.endswith("\\"):
                    pending = pending[:-1].rstrip()
                    continue
                joined.append(pending)
                pending = ""
        commands += [c for c in joined if c and not c.startswith("#")]
    return commands


def split_words(command: str) -> list[list[str]]:
    """Each simple command of a line as words, without `NAME=value` prefixes; `ray job submit ... -- CMD` gives CMD."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words, simple = list(lexer), [[]]
    for word in words:
        if word in CONTROL:
            simple.append([])
        elif word == "--" and simple[-1][:1] == ["ray"]:
            simple.append([])
        else:
            simple[-1].append(word)
    out = []
    for cmd in simple:
        while cmd and re.fullmatch(r"[A-Za-z_]\w*=.*", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            out.append(cmd)
    return out


PYTHON = re.compile(r"(.*/)?python(3(\.\d+)?)?")
WRAPPERS = {"cluster/demo.sh": "demo"}  # scripts whose arguments go to a skinray command


def skinray_argv(words: list[str]) -> list[str] | None:
    """The CLI arguments a command line runs, or None when it is not a skinray command. `jobs/X.py` runs `X`."""
    if words[0] == "skinray" or words[0].endswith("/skinray"):
        return words[1:]
    if words[0] in ("bash", "sh") and len(words) > 1 and words[1] in WRAPPERS:
        return [WRAPPERS[words[1]], *words[2:]]
    rest = words[1:] if PYTHON.fullmatch(words[0]) else words
    if rest[:2] == ["-m", "skinray"] and rest is not words:
        return rest[2:]
    job = re.fullmatch(r"jobs/(\w+)\.py", rest[0]) if rest else None
    return [job.group(1), *rest[1:]] if job else None


def script_of(words: list[str]) -> str | None:
    """The repository script a command line runs (`bash cluster/demo.sh`, `python jobs/score.py`,
    `cluster/local.sh start`), if any."""
    runner = words[0] in ("bash", "sh") or PYTHON.fullmatch(words[0])
    name = (words[1] if len(words) > 1 else "") if runner else words[0]
    return name if re.fullmatch(r"\w[\w./-]*\.(sh|py)", name) else None


def parse_problem(argv: list[str]) -> str | None:
    """Why the real parser refuses ``argv`` (an unknown subcommand or flag, a bad value), or None."""
    err = io.StringIO()
    cli._ARGV = argv  # what _Parser.error reads to choose its output format
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli._parser().parse_args(argv)
    except SystemExit as exc:
        if not (exc.code == 0 and "--help" in argv):
            message = err.getvalue().strip().splitlines()
            return message[-1] if message else f"exit {exc.code}"
    finally:
        cli._ARGV = None
    return None


def subcommands() -> dict[str, set[str]]:
    """Each subcommand and the option strings its parser accepts."""
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def flag_problem(argv: list[str], known: dict[str, set[str]]) -> str | None:
    """A flag argparse accepted only as an abbreviation of another (`--ham1000` for `--ham10000`)."""
    flags = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--") and a != "--"]
    wrong = [f for f in flags if f not in known.get(argv[0], set())]
    return f"skinray {argv[0]} has no {', '.join(wrong)} (only as an abbreviation)" if wrong else None


def example_problems(text: str, where: str) -> tuple[list[str], set[str]]:
    """Problems with the examples of a page (code blocks: scripts exist and skinray parses them for real; inline
    code: the subcommand and its flags exist), and the subcommands they use."""
    known, problems, used = subcommands(), [], set()
    for command in shell_commands(text):
        for words in split_words(command):
            script = script_of(words)
            if script and not (ROOT / script).is_file():
                problems.append(f"{where}: `{command}`: no file {script}")
                continue
            argv = skinray_argv(words)
            if argv is None:
                continue
            used.update(argv[:1])
            problem = parse_problem(argv) or flag_problem(argv, known)
            if problem:
                problems.append(f"{where}: `{command}`: {problem}")
    for span in re.findall(r"`([^`]+)`", prose(text)):
        span = " ".join(span.split())
        argv = skinray_argv(span.split(" ")) if " " in span else None
        if not argv or not re.fullmatch(r"[a-z][\w-]*", argv[0]):
            continue
        if argv[0] not in known:
            problems.append(f"{where}: `{span}`: no subcommand {argv[0]!r}")
            continue
        used.add(argv[0])
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
            if flag not in known[argv[0]]:
                problems.append(f"{where}: `{span}`: skinray {argv[0]} has no {flag}")
    return problems, used


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets `-1`, `-2`, ... as on GitHub."""
    found, count = set(), {}
    for line in prose(path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            found.add(f"{base}-{count[base]}" if base in count else base)
            count[base] = count.get(base, 0) + 1
    return found


def links(text: str) -> list[str]:
    """The targets of a page's markdown links and images (inline code and code blocks left out)."""
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", re.sub(r"`[^`]*`", "", prose(text)))


def link_problems(path: Path, text: str) -> list[str]:
    """Links of ``text`` (a page at ``path``) to a file that is not there, or to a heading its page lacks."""
    problems, where = [], path.relative_to(ROOT)
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: link {target}: no {file_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: link {target}: no heading #{anchor} in {file_part or path.name}")
    return problems


def test_the_readme_is_a_quick_start():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/"
    assert "bash cluster/demo.sh" in lines and "bash tests/run.sh" in lines  # the two commands, as lines of code


def test_every_docs_page_is_linked_from_the_readme():
    section = README.read_text().split("\n## Where to read more", 1)[1].split("\n## ", 1)[0]
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(section)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages README.md's 'Where to read more' does not link: {missing}"


def test_every_relative_link_and_anchor_resolves():
    problems = [p for page in PAGES for p in link_problems(page, page.read_text())]
    assert not problems, "\n".join(problems)


def test_every_skinray_example_parses_and_its_help_works():
    problems, used = [], set()
    for page in PAGES:
        found, subs = example_problems(page.read_text(), str(page.relative_to(ROOT)))
        problems += found
        used |= subs
    assert {"score", "train", "prepare", "query"} <= used, used  # the checker found the examples
    problems += [f"skinray {s} --help: {p}" for s in sorted(used) if (p := parse_problem([s, "--help"]))]
    assert not problems, "\n".join(problems)


def test_the_intended_use_reads_the_same_in_readme_and_model_card():
    card = (ROOT / "docs" / "model-card.md").read_text()
    section = card.split("## Intended use", 1)[1].strip()
    first_sentence = section.split(":", 1)[0]  # "Triage support for a clinician reading dermoscopic images"
    assert first_sentence in README.read_text() and "It is not a diagnosis" in README.read_text()


@pytest.mark.parametrize("page, expected", [
    ("```bash\nskinray score --model m --input i --out o --no-such-flag\n```\n", "unrecognized arguments"),
    ("```bash\nskinray scroe --model m\n```\n", "invalid choice"),
    ("```console\n$ skinray train --prepared p --out o \\\n    --workers two\n```\n", "invalid int value"),
    ("```bash\nray job submit --working-dir . -- python jobs/score.py --model m --no-such-flag\n```\n",
     "unrecognized arguments"),
    ("```bash\nRAY_ADDRESS=x python -m skinray query out --top-suspicious 3 --no-such-flag  # c\n```\n",
     "unrecognized arguments"),
    ("```bash\npython jobs/nosuch.py --out o\n```\n", "no file jobs/nosuch.py"),
    ("```bash\nbash cluster/no-such-script.sh --out x\n```\n", "no file cluster/no-such-script.sh"),
    ("```bash\nbash cluster/demo.sh --out d --ham1000 h\n```\n", "has no --ham1000 (only as an abbreviation)"),
    ("Run `skinray score --model M --no-such-flag` tonight.\n", "skinray score has no --no-such-flag"),
    ("A table cell: `skinray scroe --out X`.\n", "no subcommand 'scroe'"),
])
def test_the_example_checker_catches_a_typo(page, expected):
    problems, _ = example_problems(page, "made-up.md")
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_example_checker_accepts_output_and_placeholders():
    page = ("```\nskinray demo finished in 305 s\n```\n"                       # console output, not a command
            "```bash\nskinray query OUT \"SELECT 1\" --format csv | head\n"     # positional placeholders parse
            "pip install 'skinray[train]'\n```\n`skinray.json`, `skinray: error: ...`\n")
    assert example_problems(page, "made-up.md") == ([], {"query"})


def test_the_link_checker_catches_a_missing_file_or_heading():
    page = README
    text = "[a](docs/no-such-page.md) [b](docs/model-card.md#no-such-heading) [c](docs/model-card.md#intended-use)"
    problems = link_problems(page, text)
    assert len(problems) == 2 and "no docs/no-such-page.md" in problems[0] and "#no-such-heading" in problems[1]
    assert slug("Quick start (fresh machine, Python 3.11, no internet needed beyond `pip`)") == \
        "quick-start-fresh-machine-python-311-no-internet-needed-beyond-pip"
    assert slug("IAM / credentials") == "iam--credentials"


ROOMS = ("io", "decision", "model", "data", "render", "inference", "train", "scoring", "clinic", "cli")
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_modules(text: str) -> set[str]:
    """``room/module`` (and ``room/module.name``) spans of inline code in a page: the modules it names."""
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        span = re.sub(r"\.py\b", "", span)  # `cli/flags.py` names the module cli/flags
        m = re.fullmatch(r"(" + "|".join(ROOMS) + r")/(\w+)(?:\.(\w+))?(?:\s.*)?", span)
        if m:
            found.add(m.group(0).split()[0])
    return found


def test_the_architecture_page_names_every_module_and_only_modules_that_exist():
    import importlib

    text = ARCHITECTURE.read_text()
    named = _named_modules(text)
    wrong = []
    for ref in sorted(named):
        module, _, attr = ref.partition(".")
        path = ROOT / "skinray" / f"{module}.py"
        if not path.exists():
            wrong.append(f"{ref}: no skinray/{module}.py")
        elif attr and not hasattr(importlib.import_module("skinray." + module.replace("/", ".")), attr):
            wrong.append(f"{ref}: no {attr} in skinray/{module}.py")
    assert not wrong, wrong
    rooms_table = text[text.index("## The rooms"): text.index("## Stages")]
    for path in sorted((ROOT / "skinray").rglob("*.py")):
        rel = path.relative_to(ROOT / "skinray")
        if rel.name == "__init__.py" and len(rel.parts) > 1 or rel.name == "__main__.py":
            continue
        assert f"`{rel.stem}`" in rooms_table, f"skinray/{rel} is not in the architecture page's rooms table"
        if len(rel.parts) > 1 and rel.parts[0] != "cli":
            assert f"{rel.parts[0]}/{rel.stem}" in named, f"skinray/{rel} is never named as {rel.parts[0]}/{rel.stem}"


def test_the_module_checker_reads_room_paths():
    assert _named_modules("`data/prepare` → `scoring/runs.RunRecord` `render/plots (x)` `cli` `io` `cli/flags.py`") == {
        "data/prepare", "scoring/runs.RunRecord", "render/plots", "cli/flags"}

"""Every command the README and docs/ show is one the project accepts as written.

Each ``bash`` block's commands are checked the cheap way a typo shows: a script's command line must
parse with that script's own argparse parser (nothing is run past the parsing), a config or script it
names must exist, a ``make`` target must be in the Makefile. Every relative link of the README, the
user's guide (``docs/``) and the experiments pages (``experiments/``) must lead to a file that exists,
and a ``#anchor`` to a heading of the page it names.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from helpers import ROOT, load_script

GUIDE = sorted((ROOT / "docs").glob("*.md"))
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.md"))
PAGES = [ROOT / "README.md", *GUIDE, *EXPERIMENTS]
EXTERNAL = ("pip", "kaggle", "unzip", "tmux", "cd", "export", "ls")


class Parsed(Exception):
    """Raised right after a script's parser accepted its arguments: the command goes no further."""


def bash_commands(page: Path) -> list[str]:
    """The commands of the page's ```bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = [(page.relative_to(ROOT).as_posix(), command) for page in PAGES for command in bash_commands(page)]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def script_and_args(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) of a python/torchrun/tmux-script command line, or None for other programs."""
    if words[0] in (".venv/bin/python", "python") and words[1] != "-m":
        return words[1], words[2:]
    if words[0] == ".venv/bin/torchrun":
        script = next(w for w in words[1:] if w.endswith(".py"))
        return script, words[words.index(script) + 1:]
    if words[0] == "scripts/train_tmux.sh":
        return "main.py", words[words.index("--") + 1:]
    return None


def check_parses(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``script``'s parser accepts ``args`` (argparse exits 2 on anything it does not know)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        load_script(script).main(args)


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_documented_command_works_as_written(page: str, command: str, monkeypatch: pytest.MonkeyPatch):
    if "[" in command or "$(" in command:  # a usage synopsis or a shell substitution: check the script only
        assert (ROOT / shlex.split(command)[1]).is_file(), command
        return
    words = [w for w in shlex.split(command) if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
    if words[0] in EXTERNAL or words[:3] == [".venv/bin/python", "-m", "pytest"]:
        return
    if words[0] == "make":
        assert set(words[1:]) <= make_targets(), f"{page}: no such make target in {command!r}"
        return
    found = script_and_args(words)
    assert found, f"{page}: unknown program in {command!r}"
    script, args = found
    assert (ROOT / script).is_file(), f"{page}: no {script}"
    for config in (w for w in args if w.endswith(".yaml")):
        assert (ROOT / config).is_file(), f"{page}: no {config} ({command!r})"
    check_parses(script, args, monkeypatch)


def test_every_page_shows_commands_and_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in GUIDE + EXPERIMENTS:
        name = page.relative_to(ROOT).as_posix()
        assert f"({name}" in readme, f"README does not link {name}"


def test_a_mistyped_flag_is_caught(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(SystemExit):
        check_parses("test.py", ["--cfg", "configs/demo_cpu.yaml", "--split-name", "val"], monkeypatch)


def heading_anchors(page: Path) -> set[str]:
    """The ``#anchors`` GitHub gives the page's headings (lower case, punctuation dropped, spaces to hyphens)."""
    anchors: set[str] = set()
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(page: Path) -> list[str]:
    """The page's link targets outside code blocks that are not URLs."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


LINKS = [(page, target) for page in PAGES for target in relative_links(page)]


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p.relative_to(ROOT).as_posix()}: {t}" for p, t in LINKS])
def test_relative_link_resolves(page: Path, target: str):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.relative_to(ROOT)}: {target} leads nowhere"
    if anchor:
        assert linked.suffix == ".md", f"{page.relative_to(ROOT)}: {target}: an anchor on a page that is not markdown"
        assert anchor in heading_anchors(linked), f"{page.relative_to(ROOT)}: {target}: no such heading"


def test_anchors_of_the_guide_and_experiments_name_what_they_measure():
    for page in PAGES:
        for anchor in heading_anchors(page):
            assert not re.search(r"(^|-)(issue|items?)(-|$)", anchor), f"{page.relative_to(ROOT)}: #{anchor}"


def test_the_guide_holds_no_raw_run_outputs():
    assert not [p for p in (ROOT / "docs").rglob("*") if p.suffix in (".csv", ".json", ".log", ".pth", ".onnx")]
    assert not (ROOT / "docs" / "runs").exists()


def library_modules() -> list[str]:
    """Every module of the installed packages, as ``package/module.py`` (``__init__.py`` files left out)."""
    packages = ("utils", "process", "data", "models", "training", "evaluation", "explain", "deploy")
    return sorted(p.relative_to(ROOT).as_posix() for name in packages for p in (ROOT / name).glob("*.py")
                  if p.name != "__init__.py")


@pytest.mark.parametrize("module", library_modules())
def test_the_architecture_page_names_every_module(module: str):
    assert f"`{module}`" in (ROOT / "docs" / "architecture.md").read_text(), f"docs/architecture.md: no {module}"


def test_no_two_modules_share_a_name():
    """Library, entry points, scripts and benchmarks: a module's name says which it is (``export.py`` and a
    ``deploy/export.py`` once both existed)."""
    modules = [p for p in ROOT.rglob("*.py") if p.name != "__init__.py"
               and p.relative_to(ROOT).parts[0] not in ("tests", ".venv", "demo", "output")]
    names = [p.name for p in modules]
    assert len(modules) > 60 and len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})

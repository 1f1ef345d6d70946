"""The docs say what the repository does (issue 25, item 13): the README's commands run as
written, references between the docs land, nothing cited lies outside the repository, and what
the docs say `make bench` runs and how long access tokens live is what the Makefile and the
configuration say."""

from __future__ import annotations

import re
from pathlib import Path

from creditapp.config import load_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]}


def _shell_snippets(markdown: str) -> list[str]:
    """The shell of a Markdown text, in order: its `sh` blocks and its inline code that runs
    curl."""
    pieces = re.findall(r"```sh\n(.*?)```|`([^`\n]*curl [^`\n]*)`", markdown, flags=re.DOTALL)
    return [block or inline for block, inline in pieces]


def test_every_shell_variable_of_the_readme_is_set_before_it_is_used() -> None:
    set_so_far: set[str] = set()
    unset = []
    for snippet in _shell_snippets(README):
        for line in snippet.splitlines():
            code = line.split(" # ", 1)[0]
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code))
            unset += sorted(used - set_so_far)
            set_so_far |= set(re.findall(r"(?:^|[\s;])(?:export\s+)?([A-Za-z_]\w*)=", code))
    assert unset == []


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_references_to_the_readme_name_its_headings() -> None:
    """`(README, "Production")` names a heading or a point in bold; `README.md#anchor` a
    heading."""
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE)
    points = [" ".join(bold.split()) for bold in re.findall(r"\*\*(.+?)\*\*", prose, re.DOTALL)]
    for path, text in DOCS.items():
        for named in re.findall(r"README, \"([^\"]+)\"", text):
            named = " ".join(named.split())
            assert named in headings or named in points, f"{path.name} names the README's {named!r}"
        for anchor in re.findall(r"README\.md#([\w-]+)", text):
            assert anchor in {_anchor(heading) for heading in headings}, f"{path.name}: #{anchor}"


def test_no_doc_cites_a_file_outside_the_repository() -> None:
    for path, text in DOCS.items():
        cited = re.findall(r"\]\(([^)#\s]+)", text) + re.findall(r"`(\.\./[^`\s]+)`", text)
        for target in cited:
            if re.match(r"[a-z]+:", target):  # a web address
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} cites {target}"
            assert resolved.exists(), f"{path.name} cites {target}, which is not there"


def test_the_docs_say_what_make_bench_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    scripts = re.findall(r"bench/\w+\.py", recipe)
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    said = next(p for p in benchmarks.split("\n\n") if "`make bench` runs" in p)
    assert scripts and all(f"`{script}`" in said for script in scripts)
    assert f"all {['one', 'two', 'three', 'four', 'five', 'six'][len(scripts) - 1]}" in said
    for line in benchmarks.splitlines():
        if line.startswith("make bench "):
            comment = line.split("#", 1)[1]
            assert "=" not in comment and "both" not in comment and "three" not in comment, line


def test_the_docs_give_access_tokens_the_lifetime_they_have() -> None:
    minutes = int(load_config("testing").JWT_ACCESS_TOKEN_EXPIRES.total_seconds() // 60)
    for path, text in DOCS.items():
        for said in re.findall(r"[Aa]ccess tokens[^.;]*? live (\S+ \S+)", text):
            assert said.split() == [str(minutes), "minutes"], f"{path.name}: {said}"

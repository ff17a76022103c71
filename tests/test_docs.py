"""The documentation describes what the code does (the parts a test can check)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from relay import metrics

ROOT = Path(__file__).parent.parent


def test_every_metric_is_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    names = [m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert names
    for name in names:
        # prometheus_client keeps a counter's name without its _total suffix.
        assert f"`{name}`" in ops or f"`{name}_total`" in ops, name


def test_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:8] if re.match(r"^make (run|test)\b", line)]
    assert [c.split()[1] for c in commands] == ["run", "test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


# What a reader outside the project cannot follow: files that are not in the repository, and
# the labels of the project's internal copies of the original API's documents.
OUTSIDE_REFERENCES = [
    (re.compile(r"CONTRACT(\.md)?\b"), "the project's contract file"),
    (re.compile(r"\.\./shared|shared/seeds|shared/research"), "a path outside the repository"),
    (re.compile(r"\bseeds?\b", re.I), "an internal seed label"),
    (re.compile(r"(?<![\w.,:/-])00\d(?![\w.,-])"), "an internal document number like 001"),
    (re.compile(r"\bthe documents\b", re.I), "'the documents' (internal wording)"),
]


def _published_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(p for p in (ROOT / "config").rglob("*") if p.is_file())
    files += sorted((ROOT / "systemd").glob("*"))
    return files


def test_docs_stand_on_their_own() -> None:
    problems = []
    for path in _published_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in OUTSIDE_REFERENCES:
                if pattern.search(line):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_relative_links_stay_in_the_repository() -> None:
    link = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in link.findall(path.read_text()):
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name}: {target}"


def test_compatibility_names_are_explained() -> None:
    """Names the API keeps from the original one are explained where the API uses them."""
    api = (ROOT / "docs" / "api.md").read_text()
    glossary = api.split("## Compatibility names", 1)[1].split("\n## ", 1)[0]
    text = "\n".join(p.read_text() for p in _published_files())
    for name in sorted(set(re.findall(r"[\w-]+-by-(?:oempro|mta)|X-Octeth-[\w-]+", text))):
        assert f"`{name}`" in glossary, f"{name} is used but not explained in docs/api.md"

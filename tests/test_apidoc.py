"""docs/api.md is generated from the registry and real example runs; it must be current."""

from __future__ import annotations

import difflib

from relay.admin.dispatcher import COMMANDS
from tools.apidoc import generator as apidoc

# Families whose every command has an example. verifydomain and user.senderdomain.verify
# (families domains, sender_domains) have none: they look records up in live DNS.
EXAMPLE_FAMILIES = {
    "relay_domains",
    "users",
    "usergroups",
    "apikeys",
    "smtp_credentials",
    "webhooks",
    "suppressions",
    "events",
    "stats",
    "deliveryservers",
    "send",
    "queue",
}


async def test_docs_api_md_is_current() -> None:
    expected = await apidoc.generate()
    current = apidoc.DOCS_PATH.read_text(encoding="utf-8")
    if current != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/api.md",
                    "generated",
                )
            )[:60]
        )
        raise AssertionError("docs/api.md is stale; run `make api-docs`\n" + diff)


def test_every_command_is_listed() -> None:
    text = apidoc.DOCS_PATH.read_text(encoding="utf-8")
    for spec in apidoc.specs():
        assert f"### `{spec.name}`" in text, f"{spec.name} is not in docs/api.md"


def test_every_command_has_a_conforming_docstring() -> None:
    for spec in apidoc.specs():
        doc = apidoc.parse_docstring(spec.func.__doc__)  # raises on a malformed line
        assert doc.summary, f"{spec.name}: no summary paragraph"
        assert doc.has_errors_section, f"{spec.name}: no 'Errors:' section"
        for code, text in doc.errors:
            assert code and text, spec.name


def test_examples_cover_the_families() -> None:
    import tools.apidoc.examples  # noqa: F401  (registers them)

    missing = [
        spec.name
        for spec in apidoc.specs()
        if apidoc.family(spec) in EXAMPLE_FAMILIES and spec.name not in apidoc.EXAMPLES
    ]
    assert missing == []
    assert set(apidoc.EXAMPLES) <= set(COMMANDS)


def test_docstring_parser() -> None:
    doc = apidoc.parse_docstring(
        """Do a thing.

        More about it.

        Parameters:
            Name (String, required): the name,
                continued.
            Count (Integer): how many.
            Mode (String, conditional): when needed.

        Errors:
            1: Missing required parameter (Name)
            21-22: CC email validation errors
        """
    )
    assert doc.summary == "Do a thing." and doc.details == ["More about it."]
    assert [(p.name, p.type, p.required, p.text) for p in doc.params] == [
        ("Name", "String", "Yes", "the name, continued."),
        ("Count", "Integer", "No", "how many."),
        ("Mode", "String", "Conditional", "when needed."),
    ]
    assert doc.errors == [
        ("1", "Missing required parameter (Name)"),
        ("21-22", "CC email validation errors"),
    ]

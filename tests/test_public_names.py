"""Every public name the package or its documents promise exists, and only once."""

from __future__ import annotations

import re
from pathlib import Path

import twin
from twin.web.server import INGEST_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_name_in_dunder_all_exists_and_is_listed_once() -> None:
    missing = [name for name in twin.__all__ if not hasattr(twin, name)]
    assert missing == []
    assert len(twin.__all__) == len(set(twin.__all__))


def test_every_class_the_documents_name_as_twin_dot_something_is_exported() -> None:
    named = {name for doc in DOCUMENTS
             for name in re.findall(r"\btwin\.([A-Z]\w*)", doc.read_text())}
    assert "ShardDown" in named                  # the README's promise about fleet.asset()
    assert sorted(named - set(twin.__all__)) == []


def test_every_name_the_documents_import_from_twin_is_exported() -> None:
    imported = {name.strip() for doc in DOCUMENTS
                for names in re.findall(r"^from twin import ([\w, ]+)$", doc.read_text(), re.M)
                for name in names.split(",")}
    assert imported and sorted(imported - set(twin.__all__)) == []


def test_shard_down_can_be_caught_as_the_readme_says() -> None:
    try:
        raise twin.ShardDown(1, "down", "killed")
    except twin.ShardDown as error:
        assert isinstance(error, twin.TwinError) and "1" in str(error)


def test_the_documented_ingest_content_types_are_exactly_the_accepted_ones() -> None:
    row = next(line for line in (ROOT / "docs" / "live-view.md").read_text().splitlines()
               if line.startswith("| `POST /api/ingest`"))
    documented = set(re.findall(r"`(application/[\w.+-]+)`", row.split("415", 1)[1]))
    assert documented == INGEST_TYPES


def test_the_live_view_docs_keep_the_batch_message_inside_the_server_table() -> None:
    text = (ROOT / "docs" / "live-view.md").read_text()
    table = text.split("From the server:", 1)[1].split("\n\n", 2)[1]
    assert '{"type": "batch"' in table and '{"type": "tree"' in table

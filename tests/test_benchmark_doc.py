"""`--doc` rewrites only the generated block of its corpus; hand-written text survives."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402


def test_write_doc_replaces_only_its_block_and_keeps_notes(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\nhand-written intro\n\n"
        "<!-- BEGIN compare build-build-B -->\nold table\n<!-- END compare build-build-B -->\n\n"
        "note after the block\n\n"
        "<!-- BEGIN compare torch -->\ntorch table\n<!-- END compare torch -->\n"
    )
    report.write_doc(doc, "build-build-B", "new table\n")
    text = doc.read_text()
    assert "old table" not in text
    assert (
        "<!-- BEGIN compare build-build-B -->\nnew table\n<!-- END compare build-build-B -->\n"
        in text
    )
    assert "hand-written intro" in text and "note after the block" in text
    assert "torch table" in text
    assert text.index("new table") < text.index("note after the block") < text.index("torch")
    report.write_doc(doc, "build-build-B", "newer table\n")
    assert doc.read_text() == text.replace("new table", "newer table")


def test_write_doc_appends_a_block_it_does_not_find(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    report.write_doc(doc, "numpy-A-numpy-B", "table\n")
    assert doc.read_text() == (
        "# Benchmarks\n\nintro\n\n"
        "<!-- BEGIN compare numpy-A-numpy-B -->\ntable\n<!-- END compare numpy-A-numpy-B -->\n"
    )

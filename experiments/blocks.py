"""Generated blocks inside hand-written Markdown pages: the text between two marker lines."""

from __future__ import annotations

from pathlib import Path


def replace_block(page: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between the ``begin`` and ``end`` marker lines of ``page`` with ``section``.

    Raises ``SystemExit`` with one ``error:`` line when the page lacks either marker.
    """
    text = page.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: {page}: no {begin} ... {end} markers; add them where the section goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{section}\n{end}{tail}")

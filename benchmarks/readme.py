"""Numbers in the README come from the scripts that measure them: each script rewrites its own block.

A block is the lines between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``README.md``; a benchmark
run with ``--readme`` replaces it with the table it just measured (never typed by hand).
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write_block(name: str, text: str, path: Path = README) -> None:
    """Replace the block ``name`` of ``path`` with ``text``.

    Raises:
        SystemExit: the file has no such block (add the two marker lines first).
    """
    doc = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no block '{name}' ({begin} … {end})")
    path.write_text(pattern.sub(lambda _m: f"{begin}\n{text.strip()}\n{end}", doc, count=1))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A markdown table; a '|' inside a cell is escaped (it would end the cell)."""

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])

"""Turn .rst, .html and plain text into one markdown-like form (PDF and DOCX: extract.py).

Every later stage (QA derivation, chunking) then needs to understand only `#`
headings and blank-line paragraphs, whatever the source format was.
"""

from __future__ import annotations

import re

_RST_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}\s*$")
_RST_LEVELS = "*=-~^\"'+#`:."


def rst_to_markdown(text: str) -> str:
    """Promote RST/pydoc underlined titles to `#` headings, levels in order of first use."""
    lines = text.split("\n")
    out: list[str] = []
    levels: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and not _RST_UNDERLINE.match(line)
            and _RST_UNDERLINE.match(nxt)
            and len(nxt.strip()) >= min(len(line.strip()), 3)
        ):
            char = nxt.strip()[0]
            if char not in levels:
                levels.append(char)
            depth = min(levels.index(char) + 1, 6)
            out.append(f"{'#' * depth} {line.strip()}")
            i += 2
            continue
        if _RST_UNDERLINE.match(line) and nxt.strip() and i + 2 < len(lines) and _RST_UNDERLINE.match(lines[i + 2]):
            # Overlined title: skip the overline, the next pass sees title + underline.
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def html_to_markdown(text: str) -> str:
    from driftloop.data.extract import html_document

    return html_document(text).markdown


def to_markdown(text: str, fmt: str) -> str:
    if fmt == "html":
        return html_to_markdown(text)
    if fmt in {"rst", "pydoc", "txt"}:
        return rst_to_markdown(text)
    return text


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def sections(markdown: str) -> list[tuple[int, str, str]]:
    """Split into (level, heading, body); text before the first heading has level 0."""
    result: list[tuple[int, str, str]] = []
    level, heading, body = 0, "", []
    in_fence = False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            if heading or "".join(body).strip():
                result.append((level, heading, "\n".join(body).strip()))
            level, heading, body = len(match.group(1)), match.group(2).strip(), []
        else:
            body.append(line)
    if heading or "".join(body).strip():
        result.append((level, heading, "\n".join(body).strip()))
    return result


def paragraphs(body: str) -> list[str]:
    """Prose paragraphs only: code blocks, grammar rules and indented examples are skipped."""
    result = []
    for block in re.split(r"\n\s*\n", body):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        if block.lstrip().startswith(("```", ">>>", "::")) or all(ln.startswith(("   ", "\t")) for ln in lines):
            continue
        result.append(" ".join(ln.strip() for ln in lines))
    return result

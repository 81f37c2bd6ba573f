"""Turn .rst, .html and plain text into one markdown-like form.

Every later stage (QA derivation, chunking) then needs to understand only `#`
headings and blank-line paragraphs, whatever the source format was.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

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


class _HTMLText(HTMLParser):
    _BLOCK = {"p", "div", "li", "pre", "br", "tr", "section", "article", "table", "ul", "ol", "dd", "dt"}
    _SKIP = {"script", "style", "head", "nav", "footer"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._heading: int | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = int(tag[1])
            self.parts.append("\n\n" + "#" * self._heading + " ")
        elif tag in self._BLOCK:
            self.parts.append("\n\n" if tag in {"p", "pre", "section", "article", "table"} else "\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = None
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self._skip_depth:
            return
        self.parts.append(" ".join(data.split()) if self._heading else data)


def html_to_markdown(text: str) -> str:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    joined = "".join(parser.parts)
    return re.sub(r"\n{3,}", "\n\n", joined)


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

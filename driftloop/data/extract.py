"""Documents in the formats users have (HTML, PDF, DOCX) as a title plus `#`-markdown.

HTML goes through trafilatura, which keeps a page's main content and drops navigation
bars, headers, footers and link lists; PDF through pypdf (its outline gives the
sections); DOCX through python-docx (Heading N styles give the sections). A file the
parser cannot read raises ExtractError with the parser's own message, so the caller
can quarantine it with that reason.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass


class ExtractError(ValueError):
    """The file is not a readable document of its format; the message is the parser's."""


@dataclass(frozen=True)
class Extracted:
    title: str | None
    markdown: str


def _trafilatura_config():
    from trafilatura.settings import use_config

    config = use_config()
    # A short page (one heading, one paragraph) would otherwise fall back to trafilatura's
    # baseline, which fuses headings into the text (trafilatura issue 896).
    config.set("DEFAULT", "MIN_EXTRACTED_SIZE", "1")
    return config


def _prepare_html(text: str):
    """The page as trafilatura extracts it best: one container for its main content and
    code blocks as plain text."""
    import lxml.html
    from lxml import etree

    tree = lxml.html.document_fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text))
    # Markup inside <pre> (DocBook's <em><code>placeholder</code></em>) makes trafilatura
    # split one code block into several and lose the fence.
    for pre in tree.iter("pre"):
        code = "".join(pre.itertext())
        for child in list(pre):
            pre.remove(child)
        pre.text = None
        etree.SubElement(pre, "code").text = code
    # A heading alone in its wrappers (DocBook's <div class="titlepage"><div><div><h2>)
    # is pruned with them, as title-page boilerplate: every question of an FAQ chapter
    # after its first would vanish. The heading replaces the wrappers that hold nothing else.
    for heading in list(tree.xpath("//h1|//h2|//h3|//h4|//h5|//h6")):
        words = " ".join(heading.text_content().split())
        outer = heading
        while (parent := outer.getparent()) is not None and parent.tag in {"div", "header", "hgroup", "span"} \
                and " ".join(parent.text_content().split()) == words:
            outer = parent
        if outer is not heading and words:
            heading.tail = outer.tail
            outer.getparent().replace(outer, heading)
    # Without a recognisable content container trafilatura recovers paragraphs only and
    # drops every heading (trafilatura issue 354); generated manuals (DocBook, javadoc)
    # have none, so the body is declared the main content and trafilatura still prunes
    # the navigation, header and footer inside it.
    body = tree.find("body")
    has_main = tree.xpath("//main|//article|//*[@role='main']")
    if body is not None and not has_main:
        main = etree.Element("main")
        main.text, body.text = body.text, None
        for child in list(body):
            main.append(child)
        body.append(main)
    return tree


def html_document(text: str) -> Extracted:
    import trafilatura

    from lxml.etree import ParserError

    try:
        tree = _prepare_html(text)
    except (ParserError, ValueError, TypeError) as err:  # lxml: "Document is empty" and the like
        raise ExtractError(f"HTML: {err}") from err
    page_title = " ".join((tree.findtext(".//title") or "").split()) or None
    markdown = trafilatura.extract(
        tree, output_format="markdown", include_formatting=True, include_tables=True, include_comments=False,
        include_links=False, include_images=False, config=_trafilatura_config(),
    ) or ""
    # trafilatura escapes markdown characters in prose (search\_path); the index and the
    # questions want the words as printed.
    markdown = re.sub(r"\\([_*\[\]#<>])", r"\1", markdown)
    # A <pre> inside a paragraph comes out as "text ```code```) more text"; a fence must
    # stand on its own line or every later heading reads as code.
    markdown = re.sub(r"(?<=\S)[ \t]*```", "\n```", markdown)
    markdown = re.sub(r"^```(?=[^\w\n])[ \t]*(.*)$", "```\n\\1", markdown, flags=re.M)
    first_heading = re.search(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    if page_title and (first_heading is None or markdown[: first_heading.start()].strip()):
        # The page's <title> heads the document when no heading does.
        markdown = f"# {page_title}\n\n{markdown}"
    title = first_heading.group(1) if first_heading and not markdown[: first_heading.start()].strip() else page_title
    return Extracted(title=_plain(title) if title else None, markdown=markdown)


def _plain(heading: str) -> str:
    return re.sub(r"[*_`]", "", heading).strip()


def _outline(reader, items, depth: int = 1) -> list[tuple[int, int, str]]:
    """(page index, depth, title) of every bookmark, in reading order."""
    found = []
    for item in items:
        if isinstance(item, list):
            found += _outline(reader, item, depth + 1)
            continue
        try:
            page = reader.get_destination_page_number(item)
        except Exception:  # noqa: BLE001 - a bookmark to nowhere is skipped, not fatal
            continue
        if page is not None and item.title:
            found.append((page, depth, " ".join(str(item.title).split())))
    return found


def pdf_document(raw: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            # Opens a PDF locked by an owner password only; with a user password the page
            # access below raises pypdf's own "File has not been decrypted".
            reader.decrypt("")
        pages = [page.extract_text() or "" for page in reader.pages]
        bookmarks = _outline(reader, reader.outline)
        meta_title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as err:
        raise ExtractError(f"PDF: {type(err).__name__}: {err}") from err
    by_page: dict[int, list[tuple[int, str]]] = {}
    for page, depth, title in bookmarks:
        by_page.setdefault(page, []).append((depth, title))
    parts = []
    for index, text in enumerate(pages):
        for depth, title in by_page.get(index, []):
            heading = f"{'#' * min(depth, 6)} {title}"
            # Put the heading where its title is printed on the page, not above the page's
            # earlier sections.
            at = text.find(title)
            if at >= 0:
                parts.append(text[:at])
                parts.append(f"\n\n{heading}\n\n")
                text = text[at + len(title):]
            else:
                parts.append(f"\n\n{heading}\n\n")
        parts.append(text)
    markdown = "\n".join(parts)
    title = (str(meta_title).strip() if meta_title else "") or (bookmarks[0][2] if bookmarks else None)
    if title and not bookmarks:
        markdown = f"# {title}\n\n{markdown}"
    return Extracted(title=title or None, markdown=markdown)


_HEADING_STYLE = re.compile(r"^Heading (\d)$")


def docx_document(raw: bytes) -> Extracted:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from lxml.etree import XMLSyntaxError

    try:
        document = docx.Document(io.BytesIO(raw))
    except (PackageNotFoundError, zipfile.BadZipFile, XMLSyntaxError, ValueError, KeyError, OSError) as err:
        raise ExtractError(f"DOCX: {type(err).__name__}: {err}") from err
    from docx.table import Table

    lines = []
    title = (document.core_properties.title or "").strip() or None
    styles = [p.style.name if p.style is not None else "" for p in document.paragraphs]
    # Under a Title paragraph (the document's `#`), Heading 1 is a section: `##`.
    shift = 1 if "Title" in styles else 0
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            lines += [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
            continue
        text = block.text.strip()
        if not text:
            continue
        style = block.style.name if block.style is not None else ""
        level = _HEADING_STYLE.match(style)
        if style == "Title":
            title = title or text
            lines.append(f"# {text}")
        elif level:
            lines.append(f"{'#' * min(int(level.group(1)) + shift, 6)} {text}")
        else:
            lines.append(text)
    if title is None:
        title = next((ln.lstrip("# ") for ln in lines if ln.startswith("#")), None)
    return Extracted(title=title, markdown="\n\n".join(lines))

#!/usr/bin/env python3
"""Fails on a broken internal link of the built book or the README.

Run after `mdbook build docs`: every relative `href` and `src` of every page
under docs/book/ must name a file that exists there, and its `#fragment` an
`id` on that page; every relative link of README.md (and of the Markdown
files the book's pages link to outside the book) must name a file of the
repository, and a `#fragment` into a book chapter a heading of it. External
links (http, https, mailto) are not fetched. Only the standard library.
"""

import html.parser
import os
import re
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOK = os.path.join(ROOT, "docs", "book")


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value and tag in ("a", "img", "link", "script"):
                self.links.append(value)


def external(link):
    return re.match(r"^[a-z][a-z0-9+.-]*:", link) is not None or link.startswith("//")


def parse(path):
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def slug(heading):
    """The id mdbook gives a heading."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_book(errors):
    pages = {}
    for dirpath, _, files in os.walk(BOOK):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(dirpath, name)
                pages[os.path.normpath(path)] = parse(path)
    if not pages:
        errors.append("docs/book/ has no pages: run `mdbook build docs` first")
    for path, page in sorted(pages.items()):
        rel = os.path.relpath(path, ROOT)
        if rel.endswith(("print.html", "404.html", "toc.html")):
            continue  # mdbook's own pages repeat the chapters' links
        for link in page.links:
            if external(link):
                continue
            target, _, fragment = link.partition("#")
            target = urllib.parse.unquote(target)
            dest = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(dest):
                errors.append(f"{rel}: link to {link}: no such file")
                continue
            if fragment and dest.endswith(".html"):
                ids = pages[dest].ids if dest in pages else parse(dest).ids
                if urllib.parse.unquote(fragment) not in ids:
                    errors.append(f"{rel}: link to {link}: no id #{fragment} there")


MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def headings(path):
    ids = set()
    in_code = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                ids.add(slug(line.lstrip("#")))
    return ids


def check_markdown(path, errors):
    rel = os.path.relpath(path, ROOT)
    in_code = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("```"):
                in_code = not in_code
            if in_code:
                continue
            for m in MD_LINK.finditer(line):
                link = m.group(1) or m.group(2)
                if external(link):
                    continue
                target, _, fragment = link.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
                if not os.path.exists(dest):
                    errors.append(f"{rel}:{number}: link to {link}: no such file")
                elif fragment and dest.endswith(".md") and fragment not in headings(dest):
                    errors.append(f"{rel}:{number}: link to {link}: no heading #{fragment} there")


def main():
    errors = []
    check_book(errors)
    check_markdown(os.path.join(ROOT, "README.md"), errors)
    for name in ("CHANGELOG.md",):
        if os.path.exists(os.path.join(ROOT, name)):
            check_markdown(os.path.join(ROOT, name), errors)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} broken link(s)", file=sys.stderr)
        return 1
    print("links: every internal link of docs/book/ and README.md resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The documentation site's build hooks (mkdocs.yml ``hooks:``): pages made from the code and the repository.

* ``index.md`` is the README and ``changelog.md`` is CHANGELOG.md, so the front page and the site never drift;
* ``reference/cli.md`` is every command's ``--help``, from privfed's own parser;
* ``reference/configuration.md`` gains every config key with its default and meaning (``privfed run --help-config``);
* a file outside ``docs/`` that a page links to (a notebook, a results table, a figure, benchmarks/README.md) is
  served at its repository path on the site (``notebooks/``, ``experiments/``, ``benchmarks/``: no docs/ folder
  has those names), so the Markdown links stay ordinary relative links that also work on GitHub and in an editor
  (tests/test_docs_links.py checks those).
"""
from __future__ import annotations

import argparse
import os
import posixpath
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"(\]\()([^)\s]+)(\))|(src=\")([^\"]+)(\")")
GENERATED = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}


def _repo_target(page_src: Path, url: str) -> Path | None:
    """The repository file a relative ``url`` on the page at ``page_src`` points to, when it lies outside docs/."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("#"):
        return None
    path = url.split("#")[0]
    target = (page_src.parent / path).resolve()
    if DOCS in target.parents or not target.is_file() or ROOT not in target.parents:
        return None
    return target


def _rewrite(markdown: str, page_src: Path, page_uri: str) -> str:
    """Links leaving docs/ point at the file's copy at its repository path on the site (README's links into docs/ at
    the page itself)."""

    def fix(match: re.Match) -> str:
        pre, url, post = (match.group(1), match.group(2), match.group(3)) if match.group(1) else match.groups()[3:]
        target = _repo_target(page_src, url)
        generated = next((uri for uri, source in GENERATED.items() if source == target), None)
        if generated is not None:  # CHANGELOG.md: its page on the site
            return pre + posixpath.relpath(generated, posixpath.dirname(page_uri) or ".") + post
        if target is None:
            if page_src == ROOT / "README.md" and url.startswith("docs/"):  # the README rendered as index.md
                return pre + url[len("docs/"):] + post
            return match.group(0)
        anchor = url.partition("#")[2]
        site_path = target.relative_to(ROOT).as_posix()
        relative = posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".")
        return pre + relative + ("#" + anchor if anchor else "") + post

    return LINK.sub(fix, markdown)


def _sources() -> dict[str, Path]:
    """Every Markdown source of the site: docs/ and the generated pages, by site URI."""
    found = {p.relative_to(DOCS).as_posix(): p for p in DOCS.rglob("*.md")}
    return {**found, **GENERATED}


@event_priority(100)  # before mkdocs-jupyter's: the notebooks it renders are among the files added here
def on_files(files: Files, config) -> Files:
    for uri, source in GENERATED.items():
        files.append(File.generated(config, uri, content=_rewrite(source.read_text(), source, uri)))
    wanted: set[Path] = set()
    todo = list(_sources().values())
    while todo:  # what the pages link to, and what those files link to in turn (a results table's figure)
        source = todo.pop()
        if source.suffix != ".md":
            continue
        for match in LINK.finditer(source.read_text()):
            target = _repo_target(source, match.group(2) or match.group(5))
            if target is not None and target not in wanted and target not in GENERATED.values():
                wanted.add(target)
                todo.append(target)
    for target in sorted(wanted):  # read from where it is, served at its repository path
        file = File(target.relative_to(ROOT).as_posix(), src_dir=str(ROOT), dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls)
        files.append(file)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    uri = page.file.src_uri
    if uri in GENERATED:
        return markdown  # rewritten when generated
    source = DOCS / uri if (DOCS / uri).is_file() else ROOT / uri
    markdown = _rewrite(markdown, source, uri)
    if uri == "reference/cli.md":
        markdown = markdown.replace("<!-- privfed:cli -->", _cli_reference())
    if uri == "reference/configuration.md":
        markdown = markdown.replace("<!-- privfed:config -->", _config_reference())
    return markdown


def _cli_reference() -> str:
    """Every command's help, as argparse prints it."""
    from privfed.cli import parser

    top = parser()
    parts = [f"## privfed\n\n```text\n{top.format_help()}```\n"]
    for name, sub in _subcommands(top):
        parts.append(f"## privfed {name}\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(parts)


def _subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:  # argparse keeps its sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from _subcommands(sub, prefix + name + " ")


def _config_reference() -> str:
    from privfed.config import help_lines

    return "```text\n" + "\n".join(help_lines()) + "\n```\n"


os.environ.setdefault("COLUMNS", "120")  # argparse wraps help to the terminal: the same width on every machine

"""Every relative link in the repository's Markdown resolves: a file the README or a results page points to is
committed (``.gitignore`` keeps ``experiments/results/*/`` out, so a linked result must live beside them)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"")


def _committed_markdown() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                                check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):  # an unpacked source tree: every Markdown file it has
        return sorted(p for p in ROOT.rglob("*.md") if ".git" not in p.parts and "runs" not in p.parts)
    return [ROOT / name for name in listed]


def test_every_relative_link_resolves():
    files = _committed_markdown()
    assert ROOT / "README.md" in files
    broken = []
    for md in files:
        for match in LINK.finditer(md.read_text(encoding="utf-8")):
            link = (match.group(1) or match.group(2)).split("#")[0]
            if not link or re.match(r"^[a-z][a-z0-9+.-]*:", link):  # an anchor, a URL, mailto:
                continue
            if not (md.parent / link).exists():
                broken.append(f"{md.relative_to(ROOT)}: {link}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_maps_every_documentation_page():
    """The README's documentation map is the way into the docs from GitHub: a page it does not link is lost there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / m.group(1).split("#")[0]).resolve() for m in LINK.finditer(readme) if m.group(1)}
    pages = [p for p in _committed_markdown() if p.is_relative_to(ROOT / "docs")]
    assert len(pages) >= 15
    missing = [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked]
    assert not missing, f"README does not link {missing}"

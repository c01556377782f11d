"""The documentation site builds with ``mkdocs build --strict``: a broken link, a page missing from the navigation
or an API name mkdocstrings cannot find fails the suite. The generated pages hold what the code says."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strictly_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "privfed flower loopback" in cli and "--print-config" in cli  # every command's --help
    assert "privacy.noise_multiplier" in (site / "reference" / "configuration" / "index.html").read_text()
    assert "to_dataframe" in (site / "reference" / "api" / "index.html").read_text()  # mkdocstrings ran
    assert (site / "notebooks" / "01_quickstart" / "index.html").is_file()  # mkdocs-jupyter rendered it
    assert "docs/" not in (site / "index.html").read_text().split("<article", 1)[1]  # the README's links rewritten

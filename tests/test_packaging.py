"""Every folder of privfed that holds Python modules is a package that setup.cfg's ``find:`` installs."""
from pathlib import Path

from setuptools import find_packages

import privfed


def test_every_module_folder_is_an_installed_package():
    root = Path(privfed.__file__).parent.parent
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "privfed").rglob("*.py")}
    assert folders <= set(find_packages(str(root), include=["privfed", "privfed.*"]))

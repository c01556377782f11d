"""Every folder of privfed that holds Python modules is a package that setup.cfg's ``find:`` installs; CI runs the
README's Quick start."""
import re
from pathlib import Path

from setuptools import find_packages

import privfed


def test_every_module_folder_is_an_installed_package():
    root = Path(privfed.__file__).parent.parent
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "privfed").rglob("*.py")}
    assert folders <= set(find_packages(str(root), include=["privfed", "privfed.*"]))


def test_every_data_file_is_package_data():
    """Files beside the modules (the built-in configs, py.typed) are installed only if setup.cfg's package_data
    names them: a wheel without builtin/demo.yaml would break ``privfed run`` everywhere but in this checkout."""
    import configparser
    import fnmatch

    root = Path(privfed.__file__).parent.parent
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    patterns = {package: value.split() for package, value in setup["options.package_data"].items()}
    data = [p for p in (root / "privfed").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert any(p.name == "demo.yaml" for p in data)
    for path in data:
        owners = [package for package in patterns if (root / package.replace(".", "/")) in path.parents]
        relative = {package: path.relative_to(root / package.replace(".", "/")).as_posix() for package in owners}
        assert any(fnmatch.fnmatch(relative[p], pattern) for p in owners for pattern in patterns[p]), path


def test_ci_runs_the_quick_start_commands_of_the_readme():
    """The README's two Quick start commands are what a new user runs; .ci/run must run its test command as written
    (a flag added to one and not the other, -n auto say, would let the two drift apart)."""
    root = Path(privfed.__file__).parent.parent
    section = re.split(r"^## Quick start$", (root / "README.md").read_text(), maxsplit=1, flags=re.M)[-1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.strip().splitlines()]  # no shell comments
    assert len(commands) == 2 and commands[0].startswith("./install.sh") and "pytest" in commands[1], commands
    assert commands[1] in (root / ".ci" / "run").read_text().splitlines()

"""Every notebook runs top to bottom in a Python kernel and fails the suite on any error.

The fast run injects smaller parameters after each notebook's "parameters" cell (papermill's convention: tiny
random models, short vectors) so every cell is executed in seconds; the slow run executes the notebooks exactly
as committed, on the real models, as a reader would. Both run in a temporary directory, so the notebooks' own
output folders never land in the repository.
"""
from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from privfed.config import load_config
from privfed.results import RunDirectory
from privfed.run_result import read_results

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

TINY_DEMO = ["model.source=tiny_bert", "model.lora_layers=[]", "data.max_length=32", "data.max_examples=240",
             "data.eval_examples=40", "partition.num_clients=3", "training.rounds=2", "training.local_steps=2",
             "training.batch_size=16"]
SMALL_PARAMETERS = {
    "01_quickstart": {"OVERRIDES": TINY_DEMO},
    "02_privacy_vs_utility": {"OVERRIDES": TINY_DEMO, "EPSILONS": [8.0, float("inf")]},
    "03_secure_aggregation_inside": {"VECTOR_LENGTH": 2_000},
    "04_paillier": {"KEY_BITS": 2048, "VECTOR_LENGTH": 3_000},
    "05_federated_language_model": {
        "MODEL": "tiny_llama", "LORA_LAYERS": [0, 1],
        "SIZES": {"data.max_length": 32, "data.max_examples": 300, "data.eval_examples": 40,
                  "partition.num_clients": 3, "training.rounds": 1, "training.local_steps": 2,
                  "training.batch_size": 8},
        "PRETRAIN_SIZES": {"training.rounds": 2, "training.local_steps": 2}},
    "06_privacy_audits": {"OVERRIDES": TINY_DEMO, "EPSILONS": [1.0, 8.0], "CANARIES": 300,
                          "MECHANISM_CANARIES": 1000},
}


def _demo_quality(workdir: Path) -> None:
    """As written, the quickstart runs the built-in demo (``privfed run``): the slow tier's check that the demo
    reaches 0.85 accuracy within ε = 8 reads its results instead of training the demo a second time."""
    run_dir = workdir / "runs" / "quickstart"
    assert RunDirectory(run_dir).config() == load_config()  # the demo, unchanged
    final = read_results(run_dir)["final"]
    assert final["epsilon"] <= 8.0 and final["eval_accuracy"] >= 0.85, final


AS_WRITTEN_CHECKS = {"01_quickstart": _demo_quality}  # what a notebook's run directory must show, as written

# plots each notebook shows inline: catches a backend that silently draws nothing
FIGURES = {"01_quickstart": 1, "02_privacy_vs_utility": 1, "03_secure_aggregation_inside": 2, "04_paillier": 0,
           "05_federated_language_model": 2, "06_privacy_audits": 1}


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def execute(path: Path, workdir: Path, parameters: dict | None = None) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel with ``workdir`` as its working directory; CellExecutionError on error."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        index = _parameters_cell(nb)
        declared = {t.id for node in ast.walk(ast.parse(nb.cells[index].source))
                    if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
        assert set(parameters) <= declared, f"not parameters of {path.name}: {set(parameters) - declared}"
        source = "from math import inf  # the repr of float('inf')\n" + "\n".join(
            f"{name} = {value!r}" for name, value in parameters.items())
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def test_every_notebook_has_small_parameters_for_the_fast_run():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == set(SMALL_PARAMETERS) == set(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_tiny_models(path, tmp_path):
    nb = execute(path, tmp_path, SMALL_PARAMETERS[path.stem])
    assert _figures(nb) == FIGURES[path.stem]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_as_written(path, tmp_path):
    start = time.perf_counter()
    nb = execute(path, tmp_path)
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    assert _figures(nb) == FIGURES[path.stem]
    if path.stem in AS_WRITTEN_CHECKS:
        AS_WRITTEN_CHECKS[path.stem](tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_and_uses_only_the_public_api(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) / 2, "tell the story between the cells"
    import privfed

    private = [m.group(0) for c in code for m in re.finditer(r"(from|import)\s+privfed\.\w+", c.source)]
    for c in code:  # privfed.X must be public: in privfed.__all__
        private += [f"privfed.{node.attr}" for node in ast.walk(ast.parse(c.source))
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "privfed" and node.attr not in privfed.__all__]
    assert not private, f"notebooks use only `import privfed` and its public names, found {private}"
    _parameters_cell(nb)


def test_readme_lists_every_notebook():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in readme]
    assert not missing, f"README's notebook section does not link {missing}"

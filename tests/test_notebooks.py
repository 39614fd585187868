"""Every notebook in notebooks/ runs clean under nbclient against the smoke chain's outputs (`DIMO_PROJECT`), and
draws its figures. The sweep notebook reads a tiny stand-in Optuna study (the smoke chain runs no sweep).

The committed outputs are those of a fresh clone's `dvc repro` (`jupyter execute --inplace notebooks/*.ipynb` in
it, README "Tracking"); `DIMO_NOTEBOOK_OUTPUTS=1 pytest tests/test_notebooks.py` writes the smoke chain's instead."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT
from tests.test_ui_optuna import _tiny_study

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def _figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def test_the_new_notebooks_are_there():
    assert {"training", "evaluation", "sweep", "pseudo_label", "synthesize_views"} <= {p.stem for p in NOTEBOOKS}


@pytest.fixture(scope="module")
def study_storage(tmp_path_factory):
    db = tmp_path_factory.mktemp("optuna") / "annealing_sweep.db"
    _tiny_study(db)
    return f"sqlite:///{db}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean_and_draws(path, smoke_chain, study_storage, monkeypatch):
    monkeypatch.setenv("DIMO_PROJECT", str(smoke_chain))
    monkeypatch.setenv("DIMO_OPTUNA_STORAGE", study_storage)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    # A failing cell raises CellExecutionError naming the cell and the traceback.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(smoke_chain)}}).execute()
    assert _figures(nb) >= 1, f"{path.name}: no figure drawn"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if os.environ.get("DIMO_NOTEBOOK_OUTPUTS"):
        nbformat.write(nb, path)

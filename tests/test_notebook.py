from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_summarize import make_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "s3l_results.ipynb"


def outputs_of(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o["output_type"] in ("display_data", "execute_result")]


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_summarises_a_sweep_headless(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path)
    monkeypatch.setenv("S3L_SWEEP_DIR", str(sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (sweep / "summary.md").is_file() and (sweep / "accuracy_vs_cost.png").is_file()
    shown = [o for c in notebook.cells if c.cell_type == "code" for o in outputs_of(c)]
    tables = [o["data"]["text/markdown"] for o in shown if "text/markdown" in o["data"]]
    assert len(tables) == 1 and "| 112 |" in tables[0] and "| 43.8 |" in tables[0]
    # The accuracy-vs-cost PNG, then the per-epoch curves figure.
    assert sum("image/png" in o["data"] for o in shown) == 2

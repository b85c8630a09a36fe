"""examples/notebooks/ekv_quickstart.ipynb executed with nbclient on the CPU backend in small mode
(EKV_NOTEBOOK_SMALL=1, EKV_DEVICE=cpu, EKV_NOTEBOOK_MODEL=0), through an ekv-bench already built: EKV_BENCH
names it (ctest passes the one built beside it, so nothing is rebuilt; the test fails where it is missing),
else build/examples/ekv-bench, else the test skips. The notebook is committed without outputs; executed, every cell runs, its presets and sweeps
write ekv-bench JSON of the CPU backend, and it shows the plots. Needs nbclient, nbformat, ipykernel,
matplotlib and pandas (.ci/python-env)."""
import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "notebooks" / "ekv_quickstart.ipynb"
BENCH = pathlib.Path(os.environ.get("EKV_BENCH") or ROOT / "build" / "examples" / "ekv-bench")


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.id


def test_the_notebook_runs_on_the_cpu_backend(tmp_path, monkeypatch):
    if not BENCH.exists():  # one that EKV_BENCH (ctest) names must be there
        assert not os.environ.get("EKV_BENCH"), f"EKV_BENCH={BENCH}: no such file (build the ekv_bench target)"
        pytest.skip(f"no ekv-bench at {BENCH} (EKV_BENCH names one)")
    for name, value in {"EKV_NOTEBOOK_SMALL": "1", "EKV_DEVICE": "cpu", "EKV_NOTEBOOK_MODEL": "0",
                        "EKV_BENCH": str(BENCH), "EKV_NOTEBOOK_OUT": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

    outputs = {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == "code"}
    text = {cid: "".join(o.get("text", "") for o in outs if o.output_type == "stream") for cid, outs in outputs.items()}
    assert "no GPU used" in text["gpu"]
    assert "model section skipped" in text["model"]
    runs = sorted(tmp_path.glob("*.json"))
    assert {p.stem for p in runs} >= {"preset_long", "preset_short", "sweep_seq1024", "sweep_c16"}
    for path in runs:
        doc = json.loads(path.read_text())
        assert doc["tool"] == "ekv-bench" and doc["backend"] == "cpu"
    long_preset = json.loads((tmp_path / "preset_long.json").read_text())["configuration"]
    assert (long_preset["seq"], long_preset["heads"], long_preset["dim"], long_preset["compress"]) == (1024, 8, 128, 4)
    assert "ekv-bench on cpu" in text["presets"]  # the table ekv-bench prints
    # the pandas table: one row per run
    table = next(o for o in outputs["table"] if o.output_type == "execute_result")
    assert "preset long" in table["data"]["text/plain"] and "C 16" in table["data"]["text/plain"]
    # the plots: every one with data (the model's accuracy comes from the committed evaluation)
    images = [o for o in outputs["plots"] if o.output_type == "display_data" and "image/png" in o["data"]]
    assert len(images) == 4
    assert "accuracy_vs_compression: skipped" in text["plots"]
    assert any("image/png" in o.get("data", {}) for o in outputs["model-plot"])
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"roofline.png", "report.md"}

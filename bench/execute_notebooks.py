"""Execute the notebooks in place against the demo's output, so that they are committed with their outputs.

    make demo                                   # writes out/demo: codetransfer run tiny --out out/demo
    python bench/execute_notebooks.py           # or `make notebooks`; NAME.ipynb ... runs only those

Each notebook runs top to bottom in a fresh kernel (nbclient) with ``notebooks/`` as its working directory,
so its defaults (``OUT = ../out/demo``, ``GRID = "tiny"``, the default ``JobSettings``: the demo's) point at
the demo; ``CODETRANSFER_*`` variables are removed from the kernel's environment. On the demo's output the
notebooks' ``run_job`` calls skip every finished unit, so nothing is trained or re-analysed. Figures are kept
as PNG outputs: the kernel draws with matplotlib's inline backend, headless like ``Agg`` (under ``Agg`` the
figures would not reach the notebook). Cell ids are kept; no timing metadata is added.

A notebook is rewritten (atomically) only when every cell ran. The first failure stops the script with one
line naming the notebook and the cell (exit 1); a missing or unfinished ``out/demo`` is refused with one line
before any kernel starts (exit 2). ``tests/test_pipeline.py::test_committed_notebook_has_outputs`` checks the
result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DEMO = ROOT / "out" / "demo"
INLINE = "module://matplotlib_inline.backend_inline"


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def failed_cell(nb) -> str:
    """The id of the first cell with an error output (nbclient records it before raising)."""
    for cell in nb.cells:
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return str(cell.get("id"))
    return "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Execute notebooks/*.ipynb in place against out/demo.")
    ap.add_argument("names", nargs="*", help="notebook file names (default: every notebook in notebooks/)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    args = ap.parse_args(argv)
    if not DEMO.is_dir():
        fail(f"{DEMO} does not exist; run 'make demo' first (it writes out/demo)", 2)
    if not (DEMO / "report" / "index.html").is_file():
        fail(f"{DEMO} is not a finished demo (no report/index.html); run 'make demo' again to finish it", 2)
    have = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    names = args.names or have
    unknown = [n for n in names if n not in have]
    if unknown:
        fail(f"no notebook '{unknown[0]}' in {NOTEBOOKS}; have: {', '.join(have)}", 2)

    import nbformat
    from nbclient import NotebookClient

    for key in [k for k in os.environ if k.startswith("CODETRANSFER_")]:
        del os.environ[key]  # the notebooks' defaults are the demo's
    os.environ["MPLBACKEND"] = INLINE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in names:
        path = NOTEBOOKS / name
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        t0 = time.time()
        client = NotebookClient(
            nb,
            timeout=args.timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        try:
            client.execute()
        except Exception as e:  # a failing cell (CellExecutionError), a timeout, a dead kernel
            what = f"{e.ename}: {e.evalue}" if hasattr(e, "ename") else f"{type(e).__name__}: {e}"
            fail(f"{name}: cell {failed_cell(nb)} failed: {what.splitlines()[0] if what else ''}", 1)
        nbformat.validate(nb)
        tmp = path.with_name(f".{name}.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
        print(f"{name}: executed in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

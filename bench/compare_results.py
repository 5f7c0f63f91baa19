"""Compare every parquet/csv table under two results folders: numeric columns to 1e-12, the others exactly.

Used to check that a change leaves the main job's tables as they were: run ``codetransfer run GRID --out A``
before and ``--out B`` after (same grid and --settings), then ``python bench/compare_results.py A/results B/results``.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ref, got = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.suffix in (".parquet", ".csv"))
gfiles = sorted(p.relative_to(got) for p in got.rglob("*") if p.suffix in (".parquet", ".csv"))
print(
    f"{len(files)} reference tables, {len(gfiles)} new; only in ref: {sorted(set(files) - set(gfiles))}, "
    f"only in new: {sorted(set(gfiles) - set(files))}"
)
worst, bad = 0.0, 0
for f in files:
    read = pd.read_parquet if f.suffix == ".parquet" else pd.read_csv
    a, b = read(ref / f), read(got / f)
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-12)
        exact = a.equals(b)
        num = a.select_dtypes("number")
        d = float(np.nanmax(np.abs(num.to_numpy(float) - b[num.columns].to_numpy(float)))) if num.size else 0.0
        worst = max(worst, 0.0 if np.isnan(d) else d)
        print(f"ok   {f} {a.shape} exact={exact} maxdiff={d:.3g}")
    except AssertionError as e:
        bad += 1
        print(f"DIFF {f}: {str(e).splitlines()[:3]}")
print(f"{len(files) - bad} of {len(files)} tables equal (atol 1e-12); worst numeric difference {worst:.3g}")

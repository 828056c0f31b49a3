"""Benchmark: `astromorph._io.write_table` to ECSV against astropy's ``Table.write``.

A table of N (default 100,000) rows with five masked float64 columns (10% masked), as an
annotate or predict_files result holds for rows that were not scored. Astropy formats
each entry of a masked column through ``MaskedColumn.__getitem__``; write_table formats
masked numeric columns as one array operation and writes the same bytes (checked here on
every run). The same table without masks is timed too, for reference. Runs alternate
between the writers (best of ``--repeats``). Numbers depend on the machine and its load;
the script prints times and ratios, it asserts nothing about speed.

Usage::

    python benchmarks/bench_write.py [--n 100000] [--repeats 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from astromorph._io import write_table


def table(n, *, masked, seed=0):
    rng = np.random.default_rng(seed)
    columns = {f"score{i}": rng.normal(size=n) for i in range(5)}
    if masked:
        columns = {name: MaskedColumn(v, mask=rng.random(n) < 0.1) for name, v in columns.items()}
    return Table(columns)


def timed(write):
    start = time.perf_counter()
    write()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp, "astromorph.ecsv"), Path(tmp, "astropy.ecsv")
        for masked in (True, False):
            t = table(args.n, masked=masked)
            times = {"astropy": [], "astromorph": []}
            for _ in range(args.repeats):  # alternate, so that load hits both alike
                times["astropy"].append(timed(
                    lambda: t.write(theirs, format="ascii.ecsv", overwrite=True)))
                times["astromorph"].append(timed(lambda: write_table(t, ours, overwrite=True)))
            if ours.read_bytes() != theirs.read_bytes():
                raise SystemExit("write_table and Table.write wrote different ECSV bytes")
            a, b = min(times["astropy"]), min(times["astromorph"])
            print(f"ECSV of {args.n} rows, five {'masked ' if masked else ''}float columns: "
                  f"Table.write {a:.3f} s, write_table {b:.3f} s -> {a / b:.1f}x "
                  "(identical bytes)")


if __name__ == "__main__":
    main()

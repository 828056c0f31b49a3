"""Benchmark: Parquet tables with an embedding column, astromorph against astropy alone.

A table of N (default 100,000) rows as ``astromorph annotate -m embedding`` writes it: an
id, RA and Dec, and a ``(N, D)`` float32 ``embedding`` (default D = 256). Astropy's own
Parquet code splits the embedding into one array per row to write it and stacks them
back to read it; `astromorph._io.write_table` and `astromorph._io.read_parquet` hand it
to pyarrow as one buffer. Both files are checked to hold the same columns, types and
header, and both readings the same table. Every step runs once on a few rows first, untimed
(the first Parquet call imports pyarrow). Numbers depend on the machine and its load; the
script prints times, it asserts nothing about speed.

For the peak memory of one step alone, run it in its own process under
``/usr/bin/time -v`` with ``--only STEP --file PATH`` (the write steps write ``PATH``, the
read steps read it); a write step's peak is that of the table it builds (one copy of its
columns, 1 GB for a million 256-d rows) plus what writing it takes::

    python benchmarks/bench_parquet.py [--rows 100000] [--dim 256] [--repeats 1]
    python benchmarks/bench_parquet.py --rows 1000000 --only write-astropy --file t.parquet
    /usr/bin/time -v python benchmarks/bench_parquet.py --only read-astromorph --file t.parquet
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import QTable, Table

from astromorph._io import read_parquet, restore_parquet_shapes, write_table

STEPS = ("write-astropy", "write-astromorph", "read-astropy", "read-astromorph")


def embedding_table(rows, dim, seed=0):
    rng = np.random.default_rng(seed)
    table = Table({"id": np.arange(rows), "ra": rng.uniform(0, 360, rows),
                   "dec": rng.uniform(-90, 90, rows),
                   "embedding": rng.standard_normal((rows, dim), dtype=np.float32)},
                  meta={"astromorph_model": "embedding"}, copy=False)  # (the peak: one table)
    table["ra"].unit = table["dec"].unit = "deg"
    table["embedding"].info.description = "unit vector"
    return table


def step(name, *, path, rows=None, dim=None):
    """Run one step; the table read, for the read steps."""
    if name.startswith("write"):
        table = embedding_table(rows, dim)
        start = time.perf_counter()
        if name == "write-astropy":
            table.write(path, format="parquet", overwrite=True)
        else:
            write_table(table, path, overwrite=True)
        return time.perf_counter() - start, None
    start = time.perf_counter()
    if name == "read-astropy":  # how astromorph read Parquet before
        table = restore_parquet_shapes(QTable.read(path, format="parquet"), path)
    else:
        table = read_parquet(path)
    return time.perf_counter() - start, table


def same_file(a, b):
    import pyarrow.parquet as pq

    return pq.read_table(a).equals(pq.read_table(b), check_metadata=True)


def same_table(a, b):
    return (a.colnames == b.colnames and dict(a.meta) == dict(b.meta)
            and all(np.array_equal(a[c], b[c]) and a[c].dtype == b[c].dtype
                    and a[c].info.description == b[c].info.description
                    and getattr(a[c], "unit", None) == getattr(b[c], "unit", None)
                    for c in a.colnames))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", choices=STEPS, help="run this step alone, on --file")
    parser.add_argument("--file", type=Path, help="the Parquet file of --only")
    args = parser.parse_args()
    if args.only:
        if args.file is None:
            parser.error("--only needs --file")
        seconds, _ = step(args.only, path=args.file, rows=args.rows, dim=args.dim)
        print(f"{args.only}: {seconds:.3f} s ({args.file})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = {"astropy": Path(tmp, "astropy.parquet"),
                 "astromorph": Path(tmp, "astromorph.parquet")}
        # warm both sides, untimed, on a few rows: the first Parquet call imports pyarrow
        # (about 0.3 s), which would otherwise fall on the first step timed, astropy's write
        for name in STEPS:
            step(name, path=Path(tmp, f"warm-{name.split('-')[1]}.parquet"), rows=10, dim=2)
        times = {s: [] for s in STEPS}
        tables = {}
        for _ in range(args.repeats):  # alternate, so that load hits both alike
            for name in STEPS:
                who = name.split("-")[1]
                seconds, table = step(name, path=files[who], rows=args.rows, dim=args.dim)
                times[name].append(seconds)
                if table is not None:
                    tables[who] = table
        print(f"Parquet of {args.rows} rows, a ({args.rows}, {args.dim}) float32 embedding, "
              f"{files['astromorph'].stat().st_size / 2**20:.1f} MiB "
              f"(best of {args.repeats}):")
        for what in ("write", "read"):
            a, b = min(times[f"{what}-astropy"]), min(times[f"{what}-astromorph"])
            print(f"  {what}: astropy {a:.3f} s, astromorph {b:.3f} s -> {a / b:.1f}x")
        print("  same file as Table.write writes:",
              same_file(files["astropy"], files["astromorph"]))
        print("  same table as QTable.read gives:",
              same_table(tables["astropy"], tables["astromorph"]))


if __name__ == "__main__":
    main()

"""Benchmark: `astromorph.annotate_stamps` on a table of N (default 20,000) real-bogus rows.

Each row holds a 63 x 63 float32 triplet (science, reference, difference): the cutouts of
the real ZTF packets in ``../shared/data/alerts`` (or ``$ASTROMORPH_DATA/alerts``) with
fresh noise per row, or synthetic stamps where the packets are absent. Compares, in one
run and on the same table and model:

* the stacked path: numeric array columns stacked 1,024 rows at a time (what
  annotate_stamps does for them);
* the per-row path: one `Stamp`, one ``np.stack`` and one `_conform` per row (what it
  does for FITS bytes and object columns, and did for every table before);
* preprocessing + model alone, in batches, on the stacked array: the floor that neither
  path can beat.

for three float32 columns, one ``(N, 3, 63, 63)`` cube column and three masked columns.
Runs alternate between the paths (best of ``--repeats``); scores and flags of the two
paths are checked to be identical. Numbers depend on the machine and on its load; the
script prints times and ratios, it asserts nothing about speed.

Usage::

    python benchmarks/bench_stamp_table.py [--n 20000] [--batch-size 256] [--repeats 3]
"""
import argparse
import gzip
import os
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

import astromorph
from astromorph import _predict, _stamp_table
from astromorph._adapters import RawStamps, prepare

DATA = Path(os.environ.get("ASTROMORPH_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def triplets(n, seed=1):
    """``(n, 3, 63, 63)`` float32: real packet cutouts plus fresh noise, and what they are."""
    rng = np.random.default_rng(seed)
    bases = []
    for path in sorted((DATA / "alerts").glob("*.avro")):
        import fastavro

        from astromorph._readers import parse_fits_bytes

        with open(path, "rb") as f:
            for rec in fastavro.reader(f):
                planes = [parse_fits_bytes(gzip.decompress(rec[k]["stampData"]))[0]
                          for k in CUTOUTS]
                if all(p.shape == (63, 63) for p in planes):
                    bases.append(np.stack(planes).astype(np.float32))
    what = f"{len(bases)} real ZTF packets"
    if not bases:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from synthetic_alerts import triplet  # imports neither pytest nor the tests

        bases = [triplet(seed=seed + i) for i in range(8)]
        what = "synthetic stamps (no real packets found)"
    bases = np.stack(bases)
    noise = 1.4826 * np.median(np.abs(bases - np.median(bases, axis=(2, 3), keepdims=True)),
                               axis=(2, 3), keepdims=True)
    out = np.empty((n, 3, 63, 63), np.float32)
    for s in range(0, n, 1000):  # in chunks: a whole float64 noise array would be 2 GB
        k = min(1000, n - s)
        which = np.arange(s, s + k) % len(bases)
        out[s:s + k] = bases[which] + rng.normal(0, 1, (k, 3, 63, 63)) * (0.3 * noise[which]
                                                                         + 1e-3)
    return out, what


def annotate(table, model, batch_size, stacked, score=True):
    """annotate_stamps on ``table``; the per-row path where ``stacked`` is false; batches
    made and dropped unscored (the stage that the two paths do differently) where ``score``
    is false."""
    real, real_score = _stamp_table._array_blocks, _predict._Runner._score
    if not stacked:
        _stamp_table._array_blocks = lambda *a: None
    if not score:
        _predict._Runner._score = lambda self, key, rows, *a: None
    try:
        t = time.perf_counter()
        out = astromorph.annotate_stamps(table, model=model, batch_size=batch_size,
                                         progress=False)
        return time.perf_counter() - t, out
    finally:
        _stamp_table._array_blocks, _predict._Runner._score = real, real_score


def floor(model, x, batch_size):
    """Preprocessing + model on the stacked array, batch by batch."""
    t = time.perf_counter()
    for s in range(0, len(x), batch_size):
        xb, _ = prepare(model, RawStamps("triplet", x[s:s + batch_size]))
        model.predict(xb, batch_size=batch_size, progress=False)
    return time.perf_counter() - t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs per path (best is kept)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    n, bs = args.n, args.batch_size
    model = astromorph.load_model("real-bogus", providers="cpu")
    model.predict(np.zeros((8, *model.input_shape), np.float32))  # warm the session
    t = time.perf_counter()
    x, what = triplets(n)
    print(f"model {model.name} v{model.version}, providers {model.providers}; {n} rows from "
          f"{what}, built in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    mask = np.zeros(x[:, 0].shape, bool)
    mask[::50, :10] = True  # 2% of the rows with masked science pixels
    tables = {
        "3 float32 columns": Table({"science": x[:, 0], "reference": x[:, 1],
                                    "difference": x[:, 2]}),
        "1 cube column (N, 3, 63, 63)": Table({"triplet": x}),
        "3 columns, science masked": Table({"science": MaskedColumn(x[:, 0], mask=mask),
                                            "reference": x[:, 1], "difference": x[:, 2]}),
    }
    for stacked in (True, False):  # warm up both paths, untimed
        annotate(tables["3 float32 columns"][:2 * bs], model, bs, stacked)
    for name, table in tables.items():
        times = {(stacked, score): [] for stacked in (False, True) for score in (False, True)}
        floors, outs = [], {}
        for _ in range(args.repeats):  # alternating, so that the load hits every path alike
            floors.append(floor(model, x, bs))
            for key in times:
                dt, out = annotate(table, model, bs, *key)
                times[key].append(dt)
                if key[1]:
                    outs[key[0]] = out
        same = all(np.array_equal(np.asarray(outs[True][c]), np.asarray(outs[False][c]))
                   for c in ("rb_score", "rb_flags", "rb_reason"))
        best = {k: min(v) for k, v in times.items()}
        base = min(floors)
        print(f"\n== {name}: scores, flags and reasons identical: {same}; flagged rows "
              f"{int(np.count_nonzero(outs[True]['rb_flags']))}")
        print(f"  preprocessing + model alone: {base:.2f} s ({1e3 * base / n:.3f} ms/row)")
        for stacked, label in ((False, "per-row path"), (True, "stacked path")):
            e2e, build = best[stacked, True], best[stacked, False]
            print(f"  {label}: end to end {e2e:.2f} s ({1e3 * e2e / n:.3f} ms/row), table -> "
                  f"batches alone {build:.2f} s ({1e3 * build / n:.4f} ms/row)")
        print(f"RATIO [{name}] table -> batches, per-row / stacked: "
              f"{best[False, False] / best[True, False]:.1f}x")
        print(f"RATIO [{name}] end to end (preprocessing + model included), per-row / stacked: "
              f"{best[False, True] / best[True, True]:.2f}x")
        print(f"FRACTION [{name}] of the end-to-end time beyond preprocessing + model: "
              f"per-row {1 - base / best[False, True]:.1%}, stacked "
              f"{1 - base / best[True, True]:.1%}")
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Benchmark: annotate_dask on a mosaic of tiles with a catalogue in random sky order.

Builds a ``--tiles`` x ``--tiles`` mosaic of adjacent ``--pixels``-pixel FITS tiles (TAN
WCS), ``--n`` sources over it in random order, and runs `astromorph.annotate_dask` with
``partition_size=--partition-size`` on Dask's threaded scheduler with ``--workers`` workers
(``threads=1`` per task), with ``sky_order=False`` (the rows in partitions as given: the
behaviour before ``sky_order``) and ``sky_order="auto"`` (the rows grouped by tile), after one
untimed call on the first partition's rows (imports, the model session). Each setting runs
``--repeats`` times, alternated; prints, for each run, the tile files sent per partition
(mean and max) and the wall time, and checks that the two tables are equal. The model is
the tests' tiny 3-band ONNX classifier (built without pytest) unless ``--model`` names one.
No numbers are asserted.

Usage::

    python benchmarks/bench_dask_tiles.py [--tiles 4] [--pixels 400] [--n 20000]
                                          [--partition-size 2000] [--workers 2]
                                          [--repeats 2]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--pixels", type=int, default=400)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--partition-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each sky_order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, tmp)


def tiny_optical_model(directory):
    """The tests' tiny 3-band classifier (``make_optical_model`` of test_annotate)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from tiny_models import make_card, tiny_classifier_onnx  # imports no pytest

    os.mkdir(directory)
    onnx_path = os.path.join(directory, "model.onnx")
    size = 16
    labels = ("a", "b", "c")
    tiny_classifier_onnx(onnx_path, channels=3, size=size, labels=labels, spatial=True)
    card = make_card(onnx_path, name="opt", channels=3, size=size, labels=labels,
                     single_band="replicate", column_prefix="opt")
    card["input"].update(family="optical",
                         preprocessing="astromorph.preprocessing.preprocess_optical",
                         angular_size={"kind": "fixed", "pixel_scale_arcsec": 0.5,
                                       "size_pix": size})
    with open(os.path.join(directory, "card.json"), "w") as f:
        json.dump(card, f)
    return directory


def run(args, tmp):
    import dask
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    import astromorph
    from astromorph import _dask as adask

    model = args.model or tiny_optical_model(os.path.join(tmp, "opt"))
    t, n = args.tiles, args.pixels
    rng = np.random.default_rng(0)
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.0, 2.2]
    w.wcs.crpix, w.wcs.cdelt = [t * n / 2, t * n / 2], [-0.4 / 3600, 0.4 / 3600]
    yy, xx = np.mgrid[:n, :n]
    paths = []
    for j in range(t):
        for i in range(t):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - i * n, w.wcs.crpix[1] - j * n]
            img = rng.normal(0.05, 0.01, (n, n)).astype(np.float32)
            for cx, cy in rng.uniform(0, n, (30, 2)):
                img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8).astype(np.float32)
            paths.append(os.path.join(tmp, f"t{j}{i}.fits"))
            fits.writeto(paths[-1], img, tw.to_header())
    sky = w.pixel_to_world(*rng.uniform(0, t * n - 1, (args.n, 2)).T)  # random order
    cat = Table({"id": np.arange(args.n), "ra": sky.ra.deg, "dec": sky.dec.deg})

    sent = []
    partition = adask._annotate_partition

    def recording(table, images, *a, **kw):
        sent.append(len(images))
        return partition(table, images, *a, **kw)
    adask._annotate_partition = recording
    print(f"{t * t} tiles of {n}x{n}, {args.n} sources in random order, partition_size "
          f"{args.partition_size}, threaded scheduler with {args.workers} workers")
    outs = {}
    with dask.config.set(num_workers=args.workers):
        astromorph.annotate_dask(cat[:args.partition_size], paths, model=model, threads=1,
                                 partition_size=args.partition_size, scheduler="threads")
        for sky_order in (False, "auto") * args.repeats:  # alternated: load hits both alike
            sent.clear()
            start = time.perf_counter()
            out = astromorph.annotate_dask(cat, paths, model=model, threads=1,
                                           partition_size=args.partition_size,
                                           scheduler="threads", sky_order=sky_order)
            wall = time.perf_counter() - start
            outs[sky_order] = out
            print(f"sky_order={sky_order!r:7}: tiles per partition mean {np.mean(sent):.2f} "
                  f"max {max(sent)} ({len(sent)} partitions), wall {wall:.2f} s")
    a, b = outs[False], outs["auto"]
    same = a.colnames == b.colnames and all(
        np.array_equal(np.ma.getdata(a[c]), np.ma.getdata(b[c]))
        and np.array_equal(np.ma.getmaskarray(a[c]), np.ma.getmaskarray(b[c]))
        for c in a.colnames)
    print("tables equal:", same)


if __name__ == "__main__":
    main()

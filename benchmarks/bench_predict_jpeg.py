"""Benchmark: where `astromorph.predict_files` spends its time on JPEG cutouts.

Scores ``--n`` (default 1,000) GZ1 JPEG cutouts from ``../shared/data/gz1/images`` (or
``$ASTROMORPH_DATA/gz1/images``; synthetic 423 x 423 JPEGs written to a temporary
folder where they are absent) with ``--model`` (default ``morphology``) and prints, in
one run, best of ``--repeats``: decoding (Pillow alone and `read_picture`), stacking,
preprocessing (`prepare`, batches of 256), the model alone, preprocessing and model
interleaved as predict_files runs them, predict_files itself and writing the table.

The preprocessing's resampling products are many small BLAS calls (one per stamp and
colour); with a multi-threaded OpenBLAS on a busy machine they cost 5 to 50 times more
than single-threaded (same values), so astromorph runs them on one BLAS thread
(``astromorph._blas.single_threaded_blas``). The run also times the preprocessing with
that limit lifted (BLAS at its own thread count) and prints the ratio. Numbers depend on
the machine and on its load; the script asserts nothing.

Usage::

    python benchmarks/bench_predict_jpeg.py [--n 1000] [--model morphology] [--repeats 2]
"""
import argparse
import contextlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

DATA = Path(os.environ.get("ASTROMORPH_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def jpegs(n, folder):
    files = sorted((DATA / "gz1" / "images").glob("*.jpeg"))[:n]
    if len(files) == n:
        return [str(f) for f in files], "GZ1 cutouts"
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:423, :423] - 211
    blob = 200 * np.exp(-(xx ** 2 + yy ** 2) / 2 / 30 ** 2)
    out = []
    for k in range(n):
        img = np.clip(blob[..., None] + rng.normal(20, 8, (423, 423, 3)), 0, 255)
        path = Path(folder) / f"{k:05d}.jpeg"
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
        out.append(str(path))
    return out, "synthetic JPEGs"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--model", default="morphology")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import astromorph
    from astromorph._adapters import RawStamps, prepare
    from astromorph._readers._pictures import read_picture
    from astromorph.preprocessing import _optical
    from PIL import Image
    imported = time.perf_counter() - start
    model = astromorph.load_model(args.model)

    with tempfile.TemporaryDirectory() as tmp:
        files, what = jpegs(args.n, tmp)
        times = {}

        def timed(name, func):
            t = time.perf_counter()
            result = func()
            times.setdefault(name, []).append(time.perf_counter() - t)
            return result

        def batches(arr):
            return [prepare(model, RawStamps("colour", arr[i:i + 256],
                                             flags=np.zeros(len(arr[i:i + 256]), np.int32)))[0]
                    for i in range(0, len(arr), 256)]

        for _ in range(args.repeats):
            timed("Pillow decode", lambda: [np.asarray(Image.open(f).convert("RGB"))
                                            for f in files])
            stamps = timed("read_picture", lambda: [read_picture(f)[0] for f in files])
            arr = timed("stack", lambda: np.stack([s.data for s in stamps]))
            xs = timed("preprocess (prepare)", lambda: batches(arr))
            with mock.patch.object(_optical, "single_threaded_blas", contextlib.nullcontext):
                timed("preprocess, BLAS threads", lambda: batches(arr))
            timed("model alone", lambda: [model.predict(x, batch_size=256, progress=False)
                                          for x in xs])
            timed("preprocess + model", lambda: [model.predict(x, batch_size=256,
                                                               progress=False)
                                                 for x in batches(arr)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = timed("predict_files", lambda: astromorph.predict_files(
                    model, files, progress=False))
            timed("write ECSV", lambda: table.write(Path(tmp) / "out.ecsv", overwrite=True))
    print(f"{args.model}, {len(files)} {what}, import {imported:.2f} s, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"BLAS threads {blas_threads()}")
    for name, t in times.items():
        print(f"  {name:26s} {min(t):7.3f} s best  ({1e3 * min(t) / len(files):6.2f} ms/file)")
    one, several = min(times["preprocess (prepare)"]), min(times["preprocess, BLAS threads"])
    print(f"  preprocessing with BLAS threads / on one BLAS thread: {several / one:.2f}")


def blas_threads():
    """The thread counts of the loaded BLAS libraries (threadpoolctl), or '?'."""
    try:
        import threadpoolctl
    except ImportError:
        return "? (no threadpoolctl: the limit is not applied)"
    return sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                   if i["user_api"] == "blas"})


if __name__ == "__main__":
    main()

"""Throughput of the ``embedding`` model and latency of exact similarity search.

From one run it prints:

* embedding throughput: stamps per second of the shipped ``embedding`` model
  through ``astromorph.load_model(...).predict`` on CPU with ``--threads``
  ONNX Runtime threads (default 2) at batch 256 (network-ready random
  stamps, so preprocessing is not included), best and median of repeats;
* similarity search: building a `astromorph.SimilarityIndex` (exact numpy
  backend) over ``--rows`` (default 1,000,000) random unit vectors of the
  model's dimension (256), then the time of one 25-nearest-neighbour query
  (median and worst of ``--queries`` queries by row), and of a batch of 100
  query vectors (at most ``--rows``). BLAS uses ``--threads`` threads too. The
  index is built once untimed first: its first use imports astropy.table.

Numbers depend on the machine and on its load; the script asserts nothing.

Usage::

    python benchmarks/bench_embedding.py [--threads 2] [--rows 1000000] [--k 25]
"""
import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=None,
                        help="vector dimension (default: the model's, else 128)")
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    # BLAS thread count must be set before numpy loads.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import time

    import numpy as np

    import astromorph

    print(f"astromorph {astromorph.__version__}, numpy {np.__version__}, python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs visible, {args.threads} threads")
    dim = args.dim
    # ------------------------------------------------------------- model throughput
    if "embedding" in astromorph.list_models():
        model = astromorph.load_model("embedding", providers="cpu", threads=args.threads)
        x = np.random.default_rng(0).uniform(
            0, 1, (args.batch, *model.input_shape)).astype(np.float32)
        out = model.predict(x, batch_size=args.batch, progress=False)  # warm-up
        model_dim = np.shape(out[model.output_names[0]])[-1]
        dim = dim or model_dim
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model.predict(x, batch_size=args.batch, progress=False)
            times.append(time.perf_counter() - t)
        times = np.array(times)
        size = os.path.getsize(model.path) / 1e6
        print(f"embedding model ({size:.2f} MB ONNX, output {model_dim}-d): "
              f"{args.batch / times.min():.0f} stamps/s best, {args.batch / np.median(times):.0f} "
              f"stamps/s median (batch {args.batch}, {args.threads} ORT threads, "
              f"{args.repeats} repeats)")
    else:
        dim = dim or 128
        print("embedding model: not shipped in models/ (skipped)")

    # ------------------------------------------------------------- exact search
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    vectors = np.empty((args.rows, dim), np.float32)
    for s in range(0, args.rows, 100_000):
        block = rng.standard_normal((min(100_000, args.rows - s), dim), dtype=np.float32)
        vectors[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    made = time.perf_counter() - t
    astromorph.SimilarityIndex(vectors[:2])  # its first use imports astropy.table: not timed
    t = time.perf_counter()
    index = astromorph.SimilarityIndex(vectors)
    built = time.perf_counter() - t
    print(f"index: {args.rows:,} x {dim} float32 unit vectors ({vectors.nbytes / 1e9:.2f} GB; "
          f"made in {made:.1f} s), SimilarityIndex built in {built * 1e3:.0f} ms (exact backend)")
    index.search(vectors[0], k=args.k, exclude=[[0]])  # warm-up
    lat = []
    for q in rng.choice(args.rows, min(args.queries, args.rows), replace=False):
        t = time.perf_counter()
        rows, sim = index.search(vectors[q], k=args.k, exclude=[[int(q)]])
        lat.append(time.perf_counter() - t)
    lat = np.array(lat) * 1e3
    # check the last query against brute force
    full = vectors @ vectors[q]
    full[q] = -np.inf
    exact = np.array_equal(rows[0], np.argsort(-full)[:args.k])
    print(f"{args.k}-NN query by row: median {np.median(lat):.1f} ms, worst {lat.max():.1f} ms "
          f"over {len(lat)} queries (result equals brute force: {exact})")
    qs = vectors[rng.choice(args.rows, min(100, args.rows), replace=False)]
    t = time.perf_counter()
    index.search(qs, k=args.k)
    dt = time.perf_counter() - t
    print(f"batch of {len(qs)} queries: {dt * 1e3:.0f} ms ({dt * 1e3 / len(qs):.1f} ms per query)")
    t = time.perf_counter()
    res = index.query(row=7, k=args.k)
    print(f"SimilarityIndex.query(row=7, k={args.k}) -> {len(res)}-row table in "
          f"{(time.perf_counter() - t) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

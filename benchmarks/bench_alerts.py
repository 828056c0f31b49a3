"""Throughput of `astromorph.predict_files` on alert packets and on FITS triplet cubes.

Builds N (default 10,000) ZTF alert packets, one per ``.avro`` file as ZTF
distributes them, by replicating the real packets in ``../shared/data/alerts``
(or ``$ASTROMORPH_DATA/alerts``) with perturbed cutouts (fresh noise, new
``candid``), or from synthetic stamps where the real packets are absent. Then
it times, from one run each:

* the stages one after the other: reading the files, Avro decoding,
  gunzip + FITS parsing of the three cutouts, preprocessing, the model;
* `predict_files` end to end (which overlaps reading with scoring);
* `astromorph.annotate_stamps` on a table of N rows holding the stamps, as float32
  array columns and as the packets' gzipped FITS bytes;
* reading and scoring N triplets stored as FITS cubes ``(3, 63, 63)``.

It uses the shipped ``real-bogus`` model when ``models/real-bogus/`` holds
one, else a stand-in ONNX network of the same input shape (a small CNN built
with ``onnx.helper``), and says which. Numbers depend on the machine and on
its load; the script prints rates and fractions, it asserts nothing.

Usage::

    python benchmarks/bench_alerts.py [--n 10000] [--batch-size 256] [--threads T]
"""
import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import astromorph
from astromorph import _predict
from astromorph._adapters import RawStamps, prepare
from astromorph._readers import iter_avro_records, parse_fits_bytes, read_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


# ----------------------------------------------------------------------------- model
def stand_in_model(directory):
    """A small random CNN (N, 3, 63, 63) -> rb_score (N,), with a card."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array((rng.normal(0, 0.1, shape)).astype(np.float32), name)

    inits = [weight("w1", (16, 3, 3, 3)), weight("b1", (16,)), weight("w2", (32, 16, 3, 3)),
             weight("b2", (32,)), weight("w3", (32, 32, 3, 3)), weight("b3", (32,)),
             weight("wf", (32, 1)), weight("bf", (1,)),
             numpy_helper.from_array(np.array([-1], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["rb_score"]),
    ]
    graph = helper.make_graph(
        nodes, "stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 63, 63])],
        [helper.make_tensor_value_info("rb_score", TensorProto.FLOAT, ["batch"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = Path(directory) / "model.onnx"
    onnx.save(model, str(path))
    card = {"name": "real-bogus-stand-in", "version": "0.0.0", "task": "score",
            "column_prefix": "rb",
            "input": {"name": "input", "shape": [3, 63, 63], "dtype": "float32",
                      "family": "triplet",
                      "preprocessing": "astromorph.preprocessing.preprocess_triplet"},
            "outputs": [{"name": "rb_score", "kind": "score"}],
            "training": {"data": "none: random weights, benchmark stand-in"}, "metrics": {},
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (Path(directory) / "card.json").write_text(json.dumps(card))
    return path


def get_model(workdir, threads):
    shipped = REPO / "models" / "real-bogus"
    if (shipped / "model.onnx").is_file() and (shipped / "card.json").is_file():
        return astromorph.load_model(shipped, threads=threads), "shipped real-bogus model"
    d = Path(workdir) / "stand-in"
    d.mkdir()
    stand_in_model(d)
    return (astromorph.load_model(d, threads=threads),
            "stand-in CNN (3 conv layers, random weights): models/real-bogus/ holds no model yet")


# ----------------------------------------------------------------------------- packets
def _split_fits(raw):
    """(header bytes, data as >f4 array) of a simple 2-D FITS stamp."""
    pos = 0
    while True:
        block = raw[pos:pos + 2880]
        pos += 2880
        if any(block[i:i + 8] == b"END     " for i in range(0, 2880, 80)):
            break
    head = raw[:pos]
    ny = nx = 63
    for i in range(0, pos, 80):
        key = raw[i:i + 8].strip()
        if key == b"NAXIS1":
            nx = int(raw[i + 10:i + 80].split(b"/")[0])
        if key == b"NAXIS2":
            ny = int(raw[i + 10:i + 80].split(b"/")[0])
    return head, np.frombuffer(raw, ">f4", count=nx * ny, offset=pos).reshape(ny, nx)


def _pack(head, data):
    body = data.astype(">f4").tobytes()
    body += b"\0" * (-len(body) % 2880)
    return gzip.compress(head + body, compresslevel=6)


def base_packets():
    """(parsed writer schema, list of records) of the real packets, or synthetic ones."""
    import fastavro

    paths = sorted((DATA / "alerts").glob("*.avro"))
    if paths:
        records, schema = [], None
        for p in paths:
            with open(p, "rb") as f:
                reader = fastavro.reader(f)
                schema = schema or reader.writer_schema
                records.extend(reader)
        return fastavro.parse_schema(schema), records, f"{len(records)} real ZTF packets"
    sys.path.insert(0, str(REPO / "tests"))
    from synthetic_alerts import ZTF_SCHEMA, ztf_alert  # synthetic, same layout

    return (fastavro.parse_schema(ZTF_SCHEMA), [ztf_alert(1 + i) for i in range(2)],
            "synthetic ZTF-like packets (no real packets found)")


def build_alerts(directory, n, variants=250, seed=1):
    import fastavro

    schema, bases, what = base_packets()
    rng = np.random.default_rng(seed)
    pieces = []
    for rec in bases:
        parts = [_split_fits(gzip.decompress(rec[k]["stampData"])) for k in CUTOUTS]
        pieces.append(parts)
    perturbed = []  # per variant: three gzipped stamps
    for v in range(variants):
        parts = pieces[v % len(pieces)]
        stamps = []
        for head, data in parts:
            noise = 1.4826 * np.median(np.abs(data - np.median(data)))
            stamps.append(_pack(head, data + rng.normal(0, 0.3 * noise + 1e-3, data.shape)))
        perturbed.append(stamps)
    for i in range(n):
        rec = dict(bases[i % len(bases)])
        rec["candid"] = 10 ** 17 + i
        stamps = perturbed[i % variants]
        for k, blob in zip(CUTOUTS, stamps):
            rec[k] = dict(rec[k], stampData=blob)
        with open(directory / f"{rec['candid']}.avro", "wb") as f:
            fastavro.writer(f, schema, [rec])
    return what


def build_cubes(directory, triplets):
    from astropy.io import fits

    head = fits.PrimaryHDU(np.zeros((3, 63, 63), np.float32)).header.tostring().encode()
    for i, t in enumerate(triplets):
        body = np.ascontiguousarray(t, ">f4").tobytes()
        (directory / f"cube{i:05d}.fits").write_bytes(head + body + b"\0" * (-len(body) % 2880))


# ----------------------------------------------------------------------------- timing
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of alerts (default 10000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: its own choice)")
    parser.add_argument("--no-cubes", action="store_true", help="skip the FITS cube part")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    n, bs = args.n, args.batch_size

    with tempfile.TemporaryDirectory(prefix="astromorph-bench-") as tmp:
        tmp = Path(tmp)
        model, which = get_model(tmp, args.threads)
        model.predict(np.zeros((8, *model.input_shape), np.float32))  # warm the session
        alerts = tmp / "alerts"
        alerts.mkdir()
        t = time.perf_counter()
        what = build_alerts(alerts, n)
        print(f"model: {which}; providers {model.providers}")
        print(f"built {n} alert packets from {what} in {time.perf_counter() - t:.1f} s "
              f"({sum(p.stat().st_size for p in alerts.iterdir()) / n / 1024:.0f} KiB each); "
              f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
        files = sorted(alerts.iterdir())

        stages, cpu = {}, {}

        def timed(name, fn):
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            stages[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
            return out

        # warm every stage once, untimed, on a few packets: the first calls import modules
        # and parse the Avro schema (about a quarter of a second for the preprocessing
        # alone), one-off costs that are not per-alert work
        few = [r for p in files[:_predict._PREFETCH_MIN_FILES]
               for r in iter_avro_records(p.read_bytes())]
        few = np.stack([[parse_fits_bytes(r[k]["stampData"])[0] for k in CUTOUTS] for r in few])
        model.predict(prepare(model, RawStamps("triplet", few))[0], progress=False)
        astromorph.predict_files(model, files[:_predict._PREFETCH_MIN_FILES], batch_size=bs,
                                 progress=False)

        blobs = timed("read files", lambda: [p.read_bytes() for p in files])
        records = timed("Avro decode", lambda: [r for b in blobs for r in iter_avro_records(b)])
        trip = timed("gunzip + FITS parse", lambda: np.stack(
            [[parse_fits_bytes(r[k]["stampData"])[0] for k in CUTOUTS] for r in records]))
        cutout_bytes = [[r[k]["stampData"] for k in CUTOUTS] for r in records]
        blobs = records = None  # free the packets before the next stages
        xs = timed("preprocess", lambda: [prepare(model, RawStamps("triplet", trip[i:i + bs]))[0]
                                          for i in range(0, n, bs)])
        timed("model", lambda: [model.predict(x, batch_size=bs, progress=False) for x in xs])
        xs = None
        total, total_cpu = sum(stages.values()), sum(cpu.values())
        print(f"\nalert stages, one after the other ({n} alerts, batch {bs}); wall-clock time, "
              "and the process's CPU time (all its threads), which the machine's load "
              "affects less:")
        for name, sec in stages.items():
            print(f"  {name:22s} {sec:7.2f} s wall {1e3 * sec / n:6.3f} ms/alert {sec / total:6.1%}"
                  f" | CPU {cpu[name]:6.2f} s {cpu[name] / total_cpu:6.1%}")
        print(f"  {'sum':22s} {total:7.2f} s wall {1e3 * total / n:6.3f} ms/alert "
              f"-> {n / total:.0f} alerts/s | CPU {total_cpu:6.2f} s -> "
              f"{n / total_cpu:.0f} alerts per CPU-second")

        results, rcpu = {}, {}
        for prefetch in (True, False):
            _predict._PREFETCH = prefetch
            t, c = time.perf_counter(), time.process_time()
            table = astromorph.predict_files(model, alerts, batch_size=bs, progress=False)
            results[prefetch], rcpu[prefetch] = time.perf_counter() - t, time.process_time() - c
            assert len(table) == n and not table["rb_flags"].any()
        _predict._PREFETCH = True
        # predict_files starts its reader thread only from _PREFETCH_MIN_FILES files on
        threaded = n >= _predict._PREFETCH_MIN_FILES
        print(f"\npredict_files end to end: {n / results[True]:.0f} alerts/s "
              f"({results[True]:.2f} s wall, {rcpu[True]:.2f} s CPU; "
              + ("files read in a background thread), " if threaded else
                 f"files read in the calling thread: no reader thread for fewer than "
                 f"{_predict._PREFETCH_MIN_FILES} files), ")
              + f"{n / results[False]:.0f} alerts/s without the reader thread; "
              f"end-to-end / sum of stages = {results[True] / total:.2f} (wall), "
              f"{rcpu[True] / total_cpu:.2f} (CPU)")
        print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

        # tables whose rows hold the stamps (a broker's Parquet file, say): three float32
        # array columns, and three columns of the gzipped FITS bytes of the packets
        from astropy.table import Table

        arrays = Table({"science": trip[:, 0], "reference": trip[:, 1],
                        "difference": trip[:, 2]})
        fits_cols = Table({k: np.array([c[j] for c in cutout_bytes], dtype=object)
                           for j, k in enumerate(CUTOUTS)})
        del cutout_bytes
        for tab in (arrays, fits_cols):  # warm-up, untimed
            astromorph.annotate_stamps(tab[:2], model=model, progress=False)
        rates = {}
        for name, tab in (("array columns", arrays), ("gzipped FITS columns", fits_cols)):
            t = time.perf_counter()
            out = astromorph.annotate_stamps(tab, model=model, batch_size=bs, progress=False)
            rates[name] = n / (time.perf_counter() - t)
            assert not out["rb_flags"].any()
        stage_rate = n / (stages["preprocess"] + stages["model"])
        print(f"\nannotate_stamps on a table of {n} rows: array columns "
              f"{rates['array columns']:.0f} rows/s ({rates['array columns'] / stage_rate:.2f} "
              f"x the preprocess + model stages alone, {stage_rate:.0f}/s); gzipped FITS columns "
              f"{rates['gzipped FITS columns']:.0f} rows/s")
        del arrays, fits_cols

        if not args.no_cubes:
            cubes = tmp / "cubes"
            cubes.mkdir()
            build_cubes(cubes, trip)
            del trip
            paths = sorted(cubes.iterdir())
            read_file(paths[0], want_scale=True, triplet_hint=True)  # warm-up, untimed
            astromorph.predict_files(model, paths[:_predict._PREFETCH_MIN_FILES],
                                     batch_size=bs, progress=False)
            t = time.perf_counter()
            for p in paths:
                read_file(p, want_scale=True, triplet_hint=True)
            read = time.perf_counter() - t
            t = time.perf_counter()
            table = astromorph.predict_files(model, cubes, batch_size=bs, progress=False)
            e2e = time.perf_counter() - t
            assert len(table) == n and not table["rb_flags"].any()
            print(f"\nFITS cubes (3, 63, 63), one per file: reading alone {n / read:.0f} "
                  f"triplets/s ({1e3 * read / n:.3f} ms each); read + score end to end "
                  f"{n / e2e:.0f} triplets/s ({e2e:.2f} s); reading = {read / e2e:.0%} of "
                  "the end-to-end time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

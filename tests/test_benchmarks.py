"""Every script in ``benchmarks/`` and ``training/benchmarks/`` runs to its end at tiny sizes.

CI does not run the benchmarks otherwise, so they would rot silently as the package
changes. Each script runs in a subprocess with pytest made unimportable (someone who runs
a benchmark need not have it), and must exit 0 and print its headline lines. The scripts
that read ``../shared/data`` run on their synthetic fallback (``ASTROMORPH_DATA`` pointed at
an empty folder), and on the real data where it is present. Nothing about speed is asserted.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

import astromorph
from conftest import DATA_DIR, REPO

#: an unpacked sdist holds the tests but not benchmarks/ or training/
pytestmark = pytest.mark.skipif(not (REPO / "benchmarks").is_dir(),
                                reason="needs the repository checkout, not an sdist")

#: the real ZTF packets that bench_alerts and bench_stamp_table replicate where present
requires_packets = pytest.mark.skipif(not any((DATA_DIR / "alerts").glob("*.avro")),
                                      reason=f"no real alert packets in {DATA_DIR / 'alerts'}")

# run a script as `python SCRIPT ARGS...` would, with `import pytest` failing
RUN = ("import runpy, sys; sys.modules['pytest'] = None; sys.argv = sys.argv[1:]; "
       "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_script(script, *args, data=None):
    """stdout of ``python SCRIPT ARGS`` from the repository root; fails on a non-zero exit."""
    path = [str(REPO), str(REPO / "training"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    if data is not None:
        env["ASTROMORPH_DATA"] = str(data)
    proc = subprocess.run([sys.executable, "-c", RUN, str(REPO / script), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


def check_lines(out, *expected):
    for text in expected:
        assert text in out, f"{text!r} missing from the output:\n{out}"


@pytest.fixture
def no_data(tmp_path):
    """An empty ``ASTROMORPH_DATA``: the scripts fall back to synthetic input."""
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def check_alerts(out, n, what):
    check_lines(out, "model: shipped real-bogus model", f"built {n} alert packets from", what,
                "alert stages, one after the other", "-> ", "predict_files end to end:",
                f"annotate_stamps on a table of {n} rows: array columns",
                "FITS cubes (3, 63, 63), one per file: reading alone")


def test_bench_alerts_synthetic(no_data):
    out = run_script("benchmarks/bench_alerts.py", "--n", 8, "--batch-size", 4, data=no_data)
    check_alerts(out, 8, "synthetic ZTF-like packets (no real packets found)")


def test_bench_alerts_says_where_few_files_are_read(no_data):
    # predict_files has no reader thread below _PREFETCH_MIN_FILES files: the label said
    # "files read in a background thread" there all the same
    out = run_script("benchmarks/bench_alerts.py", "--n", 3, "--batch-size", 4, "--no-cubes",
                     data=no_data)
    check_lines(out, "files read in the calling thread")
    assert "background thread" not in out


@requires_packets
def test_bench_alerts_real_packets():
    check_alerts(run_script("benchmarks/bench_alerts.py", "--n", 8, "--batch-size", 4),
                 8, "real ZTF packets")


def check_stamp_table(out, what):
    check_lines(out, what, "\nload average now")
    for name in ("3 float32 columns", "1 cube column (N, 3, 63, 63)",
                 "3 columns, science masked"):
        check_lines(out, f"== {name}: scores, flags and reasons identical: True",
                    f"RATIO [{name}] table -> batches, per-row / stacked:",
                    f"RATIO [{name}] end to end", f"FRACTION [{name}]")


def test_bench_stamp_table_synthetic(no_data):
    out = run_script("benchmarks/bench_stamp_table.py", "--n", 8, "--batch-size", 4,
                     "--repeats", 1, data=no_data)
    check_stamp_table(out, "8 rows from synthetic stamps (no real packets found)")


@requires_packets
def test_bench_stamp_table_real_packets():
    out = run_script("benchmarks/bench_stamp_table.py", "--n", 8, "--batch-size", 4,
                     "--repeats", 1)
    check_stamp_table(out, "real ZTF packets")


def test_bench_annotate():
    # fewer sources than the default --naive 300: the naive loop times all of them
    out = run_script("benchmarks/bench_annotate.py", "--n", 20, "--size", 256, "--repeats", 1,
                     "--off-image", 30)
    card = astromorph.model_card("morphology")
    for precision in ["float32", *(card.get("variants") or {})]:
        check_lines(out, f"precision {precision}\nannotate, 20 sources end to end:",
                    "timed on 20 sources:", f"RATIO [{precision}] naive / annotate (end to end):",
                    f"RATIO [{precision}] naive / annotate without the model",
                    f"RATIO [{precision}] model alone", f"FRACTION [{precision}]")
    check_lines(out, "sexagesimal text RA/Dec, 20 rows (", "identical degrees: True",
                "RATIO text positions astropy Angle / annotate:",
                "annotate, 20 sources on the image + 30 off it:")


def test_bench_annotate_fixed_field_model():
    # --model radio-morphology: its card fixes the field, and annotate refuses size_col
    out = run_script("benchmarks/bench_annotate.py", "--model", "radio-morphology", "--n", 8,
                     "--size", 256, "--naive", 4, "--repeats", 1, "--off-image", 10)
    check_lines(out, "== radio-morphology v", "timed on 4 sources:",
                "RATIO [float32] naive / annotate (end to end):",
                "annotate, 8 sources on the image + 10 off it:")


def test_bench_embedding():
    dim = astromorph.model_card("embedding")["outputs"][0]["size"]
    # fewer rows than the batch of 100 queries
    out = run_script("benchmarks/bench_embedding.py", "--rows", 50, "--queries", 2,
                     "--repeats", 1, "--batch", 4, "--k", 5)
    check_lines(out, f"ONNX, output {dim}-d): ", "stamps/s best", f"index: 50 x {dim} float32",
                "5-NN query by row:", "(result equals brute force: True)", "queries:",
                "SimilarityIndex.query(row=7, k=5) -> 5-row table")


def test_bench_embedding_dim_option():
    """--dim sets the vectors of the search part, not the model's output size printed."""
    dim = astromorph.model_card("embedding")["outputs"][0]["size"]
    out = run_script("benchmarks/bench_embedding.py", "--rows", 50, "--dim", 16, "--queries", 2,
                     "--repeats", 1, "--batch", 4, "--k", 5)
    check_lines(out, f"ONNX, output {dim}-d): ", "index: 50 x 16 float32",
                "5-NN query by row:", "(result equals brute force: True)", "queries:",
                "SimilarityIndex.query(row=7, k=5) -> 5-row table")


def test_bench_providers():
    out = run_script("benchmarks/bench_providers.py", "--n", 8, "--batch", 4)
    # the thread count of the timed sessions is said: by default the cards' 2
    check_lines(out, "ONNX Runtime ", "; 2 ONNX Runtime thread(s) (--threads 2)")
    for name in astromorph.list_models():
        check_lines(out, f"== {name} v{astromorph.model_card(name)['version']} [float32]")
    assert out.count("cpu -> CPUExecutionProvider: ") == out.count("\n== ")
    # every other provider is timed under its name or reported as a fallback
    for provider in ("cuda", "tensorrt"):
        rows = [line for line in out.splitlines() if line.strip().startswith(f"{provider} ->")]
        assert len(rows) == out.count("\n== ")
        assert all("FALLBACK" in r or "x the CPU provider" in r for r in rows), rows
    one = run_script("benchmarks/bench_providers.py", "--n", 4, "--batch", 4, "--providers",
                     "cpu", "--models", "real-bogus", "--threads", 1)
    check_lines(one, "; 1 ONNX Runtime thread(s) (--threads 1)", "cpu -> CPUExecutionProvider: ")


@pytest.mark.training
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
@pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                    reason="needs the training/ subproject installed")
def test_network_shapes():
    out = run_script("training/benchmarks/network_shapes.py", "--widths", "8,8,16,16",
                     "--n", 4, "--batch", 4, "--repeats", 1, "--size", 32)
    check_lines(out, "4 random stamps, batches of 4", "widths      8/8/16/16: ", " stamps/s; ",
                " M parameters, ", " M multiply-adds")


def test_bench_write():
    out = run_script("benchmarks/bench_write.py", "--n", 300, "--repeats", 1)
    check_lines(out, "ECSV of 300 rows, five masked float columns: Table.write",
                "ECSV of 300 rows, five float columns:", "(identical bytes)")


def test_bench_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    out = run_script("benchmarks/bench_parquet.py", "--rows", 50, "--dim", 8)
    check_lines(out, "Parquet of 50 rows, a (50, 8) float32 embedding", "  write: astropy ",
                "  read: astropy ", "same file as Table.write writes: True",
                "same table as QTable.read gives: True")
    one = run_script("benchmarks/bench_parquet.py", "--rows", 20, "--dim", 4, "--only",
                     "write-astromorph", "--file", tmp_path / "t.parquet")
    check_lines(one, "write-astromorph: ")
    for step in ("read-astropy", "read-astromorph"):
        check_lines(run_script("benchmarks/bench_parquet.py", "--only", step, "--file",
                               tmp_path / "t.parquet"), f"{step}: ")


def test_bench_radio_smoothing():
    """Every row of both arms is scored and smoothed (the map once left the outer sources'
    cutouts empty, 0 x 0 pixels, so predict_files timed unusable rows)."""
    out = run_script("benchmarks/bench_radio_smoothing.py", "--n", 5, "--repeats", 1,
                     "--scales", 1)
    check_lines(out, "5 sources, 2.5\" beam", "annotate, 1\" map:", "predict_files, 601^2",
                "largest probability difference, current vs previous:")


def test_bench_radio_preprocessing():
    out = run_script("benchmarks/bench_radio_preprocessing.py", "--n", 6, "--repeats", 1)
    check_lines(out, "6 float32 stamps of 300 x 300", "identical rms and uint8: True",
                "network (batches of 256):",
                "RATIO radio preprocessing, per-stamp loop / stack path:",
                "RATIO noise estimate, per-stamp loop / stack path:")


def test_bench_dask_tiles():
    # the default model is the tests' tiny classifier, built with pytest unimportable
    pytest.importorskip("dask")
    out = run_script("benchmarks/bench_dask_tiles.py", "--tiles", 2, "--pixels", 100, "--n", 300,
                     "--partition-size", 100, "--repeats", 1)
    check_lines(out, "4 tiles of 100x100, 300 sources in random order, partition_size 100",
                "sky_order=False  : tiles per partition mean ", "sky_order='auto' : tiles",
                "tables equal: True")
    assert out.count("sky_order=") == 2


def test_bench_predict_jpeg_synthetic(no_data):
    out = run_script("benchmarks/bench_predict_jpeg.py", "--n", 6, "--repeats", 1, data=no_data)
    check_lines(out, "morphology, 6 synthetic JPEGs, import ", "BLAS threads ",
                "preprocess (prepare)", "preprocess, BLAS threads", "predict_files",
                "preprocessing with BLAS threads / on one BLAS thread: ")

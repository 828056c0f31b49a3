"""The ``astromorph`` command line (``cli.py``, ``_cli_annotate.py``): parsing, defaults and
the checks made before any work.

Each test here was written against a mutant of those files that the rest of the suite let
pass (a mutation-testing round): it fails on that mutant and passes on the code as it is. No
model is run.
"""
import re

import pytest

from astromorph import cli
from astromorph.exceptions import InvalidArgumentError


def parse(argv):
    return cli._parse(cli.build_parser(), argv)[0]


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_range_bounds_are_inclusive(value):
    """``high`` (and ``low`` without ``low_open``) are allowed values: ``--crop-fraction 1``
    is accepted."""
    assert cli.check_range("--x", value, low=0, high=1) is None
    with pytest.raises(InvalidArgumentError, match=r"--x must be in \[0, 1\], got 1.5"):
        cli.check_range("--x", 1.5, low=0, high=1)


def test_a_lone_dash_after_an_option_is_an_input(tmp_path, monkeypatch):
    """``-`` is a file name (a file named ``-``), not an unknown option, wherever it
    stands."""
    monkeypatch.chdir(tmp_path)
    args = parse(["predict", "x.onnx", "a.fits", "-o", "out.ecsv", "-"])
    assert args.model == "x.onnx" and args.inputs == ["a.fits", "-"]


def test_an_onnx_file_in_capitals_names_a_model(tmp_path, monkeypatch):
    """``predict -m NET.ONNX NET.ONNX a.fits``: the first word names the model (given both
    ways, the same), whatever the case of ``.onnx``; given another -m, it is a usage
    error."""
    monkeypatch.chdir(tmp_path)
    args = parse(["predict", "-m", "NET.ONNX", "NET.ONNX", "a.fits"])
    assert args.model == "NET.ONNX" and args.inputs == ["a.fits"]
    with pytest.raises(SystemExit) as info:
        parse(["predict", "-m", "other.onnx", "NET.ONNX", "a.fits"])
    assert info.value.code == 2


def test_a_file_named_like_a_model_is_an_input(tiny_registry, tmp_path, monkeypatch):
    """``predict -m tiny tiny``, where ``tiny`` is a file here: the file is the input, not
    the model named a second time (then no input at all)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"SIMPLE  =")
    args = parse(["predict", "-m", "tiny", "tiny"])
    assert args.model == "tiny" and args.inputs == ["tiny"]


def test_no_command_prints_the_help_and_fails(capsys):
    """``astromorph`` alone is a usage error (status 2), the help on standard output."""
    assert cli.main([]) == 2
    assert "usage: astromorph" in capsys.readouterr().out


@pytest.mark.parametrize("where", [["-q", "annotate"], ["annotate", "-q"]])
def test_quiet_turns_off_the_progress_bar(monkeypatch, where):
    """``-q`` (before or after the command) is errors only: no progress bar either, as if
    ``--no-progress`` were given."""
    from astromorph import _cli_annotate

    seen = []
    monkeypatch.setattr(_cli_annotate, "_run", lambda args: seen.append(args.no_progress) or 0)
    argv = [*where, "c.ecsv", "-m", "tiny"]
    assert cli.main(argv) == 0
    assert seen == [True]
    assert cli.main([a for a in argv if a != "-q"]) == 0
    assert seen == [True, False]


# ----------------------------------------------------------------------------- annotate
@pytest.fixture
def no_work(monkeypatch):
    """The catalogue is read only after every check of the options and the output: reading
    it here fails the test."""
    from astromorph import _cli_annotate

    def read(*args, **kwargs):
        pytest.fail("the catalogue was read before the output was refused")

    monkeypatch.setattr(_cli_annotate, "_read_catalogue", read)


def test_annotate_crop_fraction_zero_names_the_option(capsys, no_work):
    """``--crop-fraction`` is in (0, 1]: 0 is refused before any work, naming the option."""
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "--crop-fraction", "0"]) == 2
    assert "--crop-fraction must be in (0, 1], got 0" in capsys.readouterr().err


def test_annotate_refuses_an_existing_output_before_any_work(tiny_registry, tmp_path, capsys,
                                                             no_work):
    (tmp_path / "out.ecsv").write_text("kept")
    assert cli.main(["annotate", str(tmp_path / "c.ecsv"), "-m", "tiny",
                     "-o", str(tmp_path / "out.ecsv")]) == 2
    assert "out.ecsv" in capsys.readouterr().err
    assert (tmp_path / "out.ecsv").read_text() == "kept"


def test_annotate_output_that_is_an_image_is_refused_even_with_overwrite(
        tiny_registry, tmp_path, capsys, no_work):
    """``-o`` naming one of the ``-i`` images would replace the image by the table: refused
    before any work, with or without ``--overwrite``."""
    (tmp_path / "img.fits").write_bytes(b"image")
    assert cli.main(["annotate", str(tmp_path / "c.ecsv"), "-m", "tiny", "-i",
                     str(tmp_path / "img.fits"), "-o", str(tmp_path / "img.fits"),
                     "--overwrite"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert (tmp_path / "img.fits").read_bytes() == b"image"


@pytest.mark.parametrize("text, expected", [
    ("0.5", 0.5), ("0.75,0.5", (0.75, 0.5)), ("scale", "scale"), ("a,b", "a,b")])
def test_annotate_pixel_scale_option(text, expected):
    from astromorph._cli_annotate import _pixel_scale_option

    assert _pixel_scale_option(text) == expected


@pytest.mark.parametrize("text, match", [
    ("1,2,3", r"one number \(arcsec/pixel\) or two \(scale_y,scale_x\), got 3: '1,2,3'"),
    ("0.5,", r"one number \(arcsec/pixel\), two \(scale_y,scale_x\) or a column name, got "
             r"'0.5,'")])
def test_annotate_pixel_scale_that_is_no_scale(text, match):
    """Three numbers, or a number and an empty part (a mistyped pair), are refused naming
    --pixel-scale, not passed on as a scale or taken for a column name."""
    from astromorph._cli_annotate import _pixel_scale_option

    with pytest.raises(InvalidArgumentError, match=r"--pixel-scale must be " + match):
        _pixel_scale_option(text)


def test_annotate_defaults(tmp_path):
    """Defaults the help states: a column that exists already is an error (no silent
    replacement of catalogue columns), 256 stamps a batch, the beam matched."""
    args = parse(["annotate", "c.ecsv", "-m", "tiny"])
    assert (args.on_conflict, args.batch_size, args.match_beam, args.overwrite) == \
        ("error", 256, True, False)


def test_annotate_catalogue_that_cannot_be_read_is_one_error_line(tmp_path, capsys):
    """A catalogue whose rows do not match its header (astropy's InconsistentTableError, a
    ValueError) is one error line naming the file, exit status 2: not a traceback."""
    bad = tmp_path / "c.csv"
    bad.write_text("ra,dec\n1,2,3\n")
    assert cli.main(["annotate", str(bad), "-m", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"astromorph: error: catalogue {str(bad)!r} cannot be read: "), err
    assert "Traceback" not in err


def test_annotate_leaves_the_csv_field_limit_as_it_was(tmp_path, capsys):
    """Reading a catalogue lifts the csv module's field limit (ECSV stamp cells are long) and
    sets it back: a program calling ``main`` keeps its own limit, whatever happened."""
    import csv

    bad = tmp_path / "c.csv"
    bad.write_text("ra,dec\n1,2,3\n")
    before = csv.field_size_limit(54321)
    try:
        assert cli.main(["annotate", str(bad), "-m", "tiny"]) == 2
        assert csv.field_size_limit() == 54321
    finally:
        csv.field_size_limit(before)


def test_models_lists_each_models_input(capsys):
    """``astromorph models`` says the field of each shipped model: the pixel scale of a
    fixed-field one, ``petrosian-scaled`` for a galaxy one."""
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^real-bogus\s+\S+\s+score\s+3x63x63 @ 1\.0"/px\s', out, re.M), out
    assert re.search(r"^morphology\s+\S+\s+classification\s+3x64x64 \(petrosian-scaled\)\s",
                     out, re.M), out


def test_annotate_stamp_size_zero_names_the_option(capsys, no_work):
    """``--stamp-size`` is > 0: 0 is refused before any work, naming the option as typed
    (not ``stamp_size`` of the Python function, nor a stamp of no pixels)."""
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "-i", "img.fits",
                     "--stamp-size", "0"]) == 2
    assert "--stamp-size must be > 0, got 0" in capsys.readouterr().err


def test_annotate_refuses_csv_for_an_embedding_before_any_work(tmp_path, capsys, no_work):
    """``-o out.csv`` with a model whose columns are arrays (the embedding) is refused before
    the catalogue is read and any stamp scored: CSV cannot hold them."""
    out = tmp_path / "out.csv"
    assert cli.main(["annotate", "c.ecsv", "-m", "embedding", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "CSV cannot hold the multidimensional column(s) embedding" in err, err
    assert not out.exists()


@pytest.fixture
def passed_on(monkeypatch):
    """What ``astromorph annotate`` passes on to `annotate` (with -i) or `annotate_stamps`
    (without): the keywords of the call, the model run by neither."""
    from astropy.table import Table

    from astromorph import _annotate, _cli_annotate, _stamp_table

    calls = {}

    def fake(name):
        def run(table, *args, **kwargs):
            calls[name] = dict(kwargs, images=args[0] if args else None)
            return Table({"x": [1], "m_flags": [0]}, meta={
                "astromorph_model": "tiny", "astromorph_model_version": "0.0.1"})
        return run

    monkeypatch.setattr(_cli_annotate, "_read_catalogue", lambda path: Table({"x": [1]}))
    monkeypatch.setattr(_annotate, "annotate", fake("annotate"))
    monkeypatch.setattr(_stamp_table, "annotate_stamps", fake("annotate_stamps"))
    return calls


def test_annotate_passes_the_image_options_on(passed_on, capsys):
    """Every option of ``annotate -i`` reaches `annotate` as given: the columns in their
    places, the stamp size in arcsec, the bands in order, the runtime options."""
    import astropy.units as u

    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "-i", "g.fits", "-i", "r.fits",
                     "--band", "g", "--band", "r", "--ra-col", "RA", "--dec-col", "DE",
                     "--size-col", "R90", "--stamp-size", "12.5", "--on-conflict", "suffix",
                     "--batch-size", "7", "--providers", "cpu", "--threads", "3",
                     "--precision", "int8", "--no-progress", "--no-match-beam"]) == 0
    kw = passed_on["annotate"]
    assert kw["images"] == ["g.fits", "r.fits"] and kw["bands"] == ["g", "r"]
    assert (kw["ra_col"], kw["dec_col"], kw["size_col"]) == ("RA", "DE", "R90")
    assert kw["stamp_size"] == 12.5 * u.arcsec and kw["stamp_size"].unit == u.arcsec
    assert (kw["model"], kw["on_conflict"], kw["batch_size"], kw["providers"], kw["threads"],
            kw["precision"], kw["progress"], kw["match_beam"]) == \
        ("tiny", "suffix", 7, "cpu", 3, "int8", False, False)


def test_annotate_passes_the_stamp_options_on(passed_on, capsys):
    """Every option of ``annotate`` without -i reaches `annotate_stamps` as given; by
    default, the progress bar is left to the function (None) and the beam matched."""
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "--stamp-col", "sci",
                     "--stamp-col", "ref", "--pixel-scale", "0.75,0.5", "--negative-col",
                     "neg", "--centre-col", "xy", "--crop-fraction", "0.5"]) == 0
    kw = passed_on["annotate_stamps"]
    assert (kw["columns"], kw["pixel_scale"], kw["negative"], kw["centre"],
            kw["crop_fraction"]) == (["sci", "ref"], (0.75, 0.5), "neg", "xy", 0.5)
    assert (kw["on_conflict"], kw["batch_size"], kw["progress"], kw["match_beam"]) == \
        ("error", 256, None, True)
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "--centre-col", "x",
                     "--centre-col", "y", "--pixel-scale", "0.4", "-q"]) == 0
    kw = passed_on["annotate_stamps"]
    assert (kw["centre"], kw["pixel_scale"], kw["progress"]) == (("x", "y"), 0.4, False)


def test_annotate_overwrite_replaces_the_output(passed_on, tiny_registry, tmp_path, capsys):
    """``-o`` an existing file with ``--overwrite``: the table is written over it, and the
    summary says where; without ``--overwrite`` the file is kept (exit status 2)."""
    from astropy.table import Table

    out = tmp_path / "out.ecsv"
    out.write_text("kept")
    argv = ["annotate", "c.ecsv", "-m", "tiny", "--stamp-col", "sci", "-o", str(out)]
    assert cli.main(argv) == 2
    assert out.read_text() == "kept"
    capsys.readouterr()
    assert cli.main([*argv, "--overwrite"]) == 0
    assert Table.read(out).colnames == ["x", "m_flags"]
    err = capsys.readouterr().err
    assert err.endswith(f"1 row(s), model tiny 0.0.1: 1 scored, 0 flagged, 0 unusable; "
                        f"table written to {out}\n"), err


def test_annotate_prints_the_table_without_its_stamps(passed_on, monkeypatch, capsys):
    """Without ``-o`` the table is printed on stdout, less its stamp columns (arrays are no
    reading matter), which a line on stderr names; ``-q`` drops that line, not the table."""
    from astropy.table import Table

    from astromorph import _stamp_table

    def scored(table, **kwargs):
        return Table({"candid": [17], "sci": [[1.0, 2.0]], "m_flags": [0]}, meta={
            "astromorph_model": "tiny", "astromorph_model_version": "0.0.1",
            "astromorph_stamp_columns": "sci"})

    monkeypatch.setattr(_stamp_table, "annotate_stamps", scored)
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split()[:2] == ["candid", "m_flags"] and "sci" not in captured.out
    assert captured.err.startswith("(stamp column(s) sci not printed; -o writes them)\n")
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "-q"]) == 0
    captured = capsys.readouterr()
    assert "candid" in captured.out and captured.err == ""


@pytest.mark.parametrize("argv", [["predict", "tiny", "a.fits", "-o", "o.ecsv", ""],
                                  ["predict", "", "a.fits"]])
def test_predict_empty_word_anywhere_is_a_usage_error(argv, capsys):
    """An empty positional word (an unset shell variable) after an option, or in the model's
    place, is the usage error 'empty path' (status 2), not a model named '' or an input
    that is the working directory."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    assert "error: argument INPUT: empty path" in capsys.readouterr().err


def test_a_model_folder_given_both_ways_is_one_model(tmp_path, monkeypatch, capsys):
    """``predict -m ./net ./net a.fits`` (a folder holding model.onnx): the folder names the
    model a second time, not an input; another -m is a usage error."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "model.onnx").write_bytes(b"onnx")
    args = parse(["predict", "-m", "net", "net", "a.fits"])
    assert args.model == "net" and args.inputs == ["a.fits"]
    with pytest.raises(SystemExit) as info:
        parse(["predict", "-m", "tiny", "net", "a.fits"])
    assert info.value.code == 2
    assert "the model is given twice and differs: MODEL 'net'" in capsys.readouterr().err


def test_verify_mismatch_says_which_digest_is_the_file_s(tiny_registry, capsys):
    """``models --verify`` on a modified file: the row shows the file's own sha256 as
    ``file`` and the card's record as ``card``, not the other way round."""
    import hashlib
    import json

    d = tiny_registry / "tiny"
    card = json.loads((d / "card.json").read_text())
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"\0")
    actual = hashlib.sha256((d / "model.onnx").read_bytes()).hexdigest()
    assert cli.main(["models", "--verify"]) == 1
    out = capsys.readouterr().out
    assert (f"SHA256 MISMATCH model.onnx (file {actual[:12]}..., card "
            f"{card['sha256'][:12]}...)") in out, out
    assert "1 model(s) FAILED verification" in out


def test_verbose_after_the_command_counts(monkeypatch, capsys):
    """``-v`` after the command raises astromorph's log level as before it does (for the run
    only); with ``-q`` on the other side of the command it is the usage error 'exclude each
    other'."""
    import logging

    from astromorph import _cli_annotate

    seen = []
    monkeypatch.setattr(_cli_annotate, "_run", lambda args: seen.append(
        logging.getLogger("astromorph").level) or 0)
    before = logging.getLogger("astromorph").level
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "-v"]) == 0
    assert seen == [logging.INFO]
    assert logging.getLogger("astromorph").level == before  # a program's own setting kept
    with pytest.raises(SystemExit) as info:
        cli.main(["-q", "annotate", "c.ecsv", "-m", "tiny", "-v"])
    assert info.value.code == 2
    assert "-q/--quiet and -v/--verbose exclude each other" in capsys.readouterr().err


def test_quiet_silences_astropy_while_the_command_runs(monkeypatch):
    """``-q`` is errors only for astropy's logger too (its warnings otherwise print with its
    own handler), while the command runs; its level and propagation and the standard output
    are what they were afterwards."""
    import logging
    import sys

    from astromorph import _cli_annotate

    astropy_log = logging.getLogger("astropy")
    monkeypatch.setattr(astropy_log, "propagate", True)  # as a program may have it
    before, propagate, stdout = astropy_log.level, astropy_log.propagate, sys.stdout
    seen = []
    monkeypatch.setattr(_cli_annotate, "_run", lambda args: seen.append(astropy_log.level) or 0)
    assert cli.main(["annotate", "c.ecsv", "-m", "tiny", "-q"]) == 0
    assert seen == [logging.ERROR]
    assert (astropy_log.level, astropy_log.propagate) == (before, propagate)
    assert sys.stdout is stdout


def test_main_sets_the_default_sigterm_action_back():
    """``main`` turns SIGTERM into an exception while it runs, and afterwards gives the
    process the default action again (run in a child, whose SIGTERM action is the
    default, whatever the test runner does with its own)."""
    import subprocess
    import sys

    code = ("import signal, sys\n"
            "from astromorph import cli\n"
            "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
            "assert cli.main(['models']) == 0\n"
            "sys.exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 3)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr

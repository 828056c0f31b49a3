"""The ``astromorph`` command line (``cli.py``, ``_cli_annotate.py``): parsing, defaults and
the checks made before any work.

Each test here was written against a mutant of those files that the rest of the suite let
pass (a mutation-testing round): it fails on that mutant and passes on the code as it is. No
model is run.
"""
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

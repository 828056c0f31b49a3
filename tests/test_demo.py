"""The README's main command: `astromorph demo` on the packaged input."""
import sys

import numpy as np
import pytest
from astropy.table import Table

import astromorph
from astromorph import cli
from astromorph._demo import demo_paths

pytestmark = pytest.mark.skipif("morphology" not in astromorph.list_models(),
                                reason="the morphology model is not shipped")


def test_packaged_demo_input_is_in_the_package():
    image, catalogue = demo_paths()
    assert image.is_file() and catalogue.is_file()
    assert image.stat().st_size < 2e6


def test_demo_command(tmp_path, capsys):
    out, png = tmp_path / "demo.ecsv", tmp_path / "demo.png"
    assert cli.main(["demo", "-o", str(out), "--gallery", str(png), "--no-progress"]) == 0
    table = Table.read(out)
    assert len(table) == 146
    probs = np.stack([table[f"morph_p_{k}"] for k in astromorph.load_model("morphology").labels], 1)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-4)
    assert png.stat().st_size > 10_000
    assert "146 sources" in capsys.readouterr().out


def test_demo_quiet_prints_nothing(tmp_path, capsys):
    """-q: errors only. The label counts and the first rows (a summary: the table is in the
    file) were printed all the same."""
    out = tmp_path / "demo.ecsv"
    assert cli.main(["demo", "-o", str(out), "-q"]) == 0
    assert len(Table.read(out)) == 146
    assert capsys.readouterr() == ("", "")


def test_demo_refuses_to_overwrite_and_writes_fits(tmp_path, capsys):
    """Existing outputs are kept unless --overwrite (checked before any work); a .fits table
    with the catalogue's Quantity columns is written and reads back."""
    from astromorph._demo import run_demo
    from astromorph.exceptions import OutputExistsError

    out = tmp_path / "demo.fits"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError, match="demo.fits"):
        run_demo(output=out, progress=False)
    assert cli.main(["demo", "-o", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert cli.main(["demo", "-o", str(out), "--no-progress", "--overwrite"]) == 0
    table = Table.read(out)
    assert len(table) == 146 and table["ra"].unit == "deg"
    assert "morph_label" in table.colnames


def test_demo_gallery_without_matplotlib_fails_before_any_work(tmp_path, monkeypatch):
    from astromorph._demo import run_demo
    from astromorph.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out = tmp_path / "demo.ecsv"
    with pytest.raises(MissingDependencyError, match=r"astromorph\[plot\]"):
        run_demo(output=out, gallery=tmp_path / "demo.png", progress=False)
    assert not out.exists()


def test_demo_refuses_one_file_for_the_table_and_the_gallery(tmp_path, capsys):
    """-o and --gallery naming one file: refused before any work (with --overwrite the
    gallery would replace the table just written)."""
    out = tmp_path / "demo.ecsv"
    assert cli.main(["demo", "-o", str(out), "--gallery", str(out), "--overwrite",
                     "--no-progress"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not out.exists()


def test_demo_refuses_models_of_other_data(tmp_path, capsys):
    """The demo image is optical: a radio model ran on it and wrote labels that meant
    nothing (exit 0), and real-bogus failed only when it found no triplets. Both are now
    refused before any work, saying what data the model takes."""
    for name, needs in [("radio-morphology", "radio images"),
                        ("real-bogus", "science, reference and difference")]:
        out = tmp_path / f"{name}.ecsv"
        assert cli.main(["demo", "-m", name, "-o", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "optical image" in err and needs in err and "Traceback" not in err, err
        assert not out.exists()


def test_demo_of_a_model_without_labels(tmp_path, capsys):
    """``demo -m embedding`` wrote its table, then crashed (StopIteration) looking for a label
    column to summarise; it now says what it wrote. A gallery (labelled thumbnails) needs a
    classifier: refused before any work."""
    out = tmp_path / "emb.ecsv"
    assert cli.main(["demo", "-m", "embedding", "-o", str(out), "--no-progress"]) == 0
    assert Table.read(out)["embedding"].shape[0] == 146
    assert "146 sources" in capsys.readouterr().out
    png = tmp_path / "emb.png"
    assert cli.main(["demo", "-m", "embedding", "-o", str(tmp_path / "e2.ecsv"),
                     "--gallery", str(png), "--no-progress"]) == 2
    assert "gallery" in capsys.readouterr().err
    assert not png.exists() and not (tmp_path / "e2.ecsv").exists()


def test_demo_gallery_says_what_it_shows(tmp_path, monkeypatch):
    """The gallery's title named the column prefix ('morph'), not the model and its version,
    nor how many of how many sources, the stretch or the orientation; the tiles gave no
    field size and no flags. Now the title and every tile say them."""
    pytest.importorskip("matplotlib")
    from astromorph import _plotting

    drawn = []
    real = _plotting.save_figure
    monkeypatch.setattr(_plotting, "save_figure",
                        lambda fig, *a, **k: (drawn.append(fig), real(fig, *a, **k)))
    from astromorph._demo import run_demo

    run_demo(output=None, gallery=tmp_path / "g.png", progress=False)
    (fig,) = drawn
    title = fig._suptitle.get_text()
    version = astromorph.model_card("morphology")["version"]
    assert f"morphology v{version}" in title and "of 146 sources" in title
    assert "north up, east left" in title and "Lupton" in title
    tiles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(tiles) == 24
    assert all("p=" in t and "\u2033" in t for t in tiles)


def test_demo_takes_the_runtime_options(tmp_path):
    """``--providers``, ``--threads`` and ``--precision`` choose how every other command that
    loads a model runs it; ``astromorph demo`` refused them ('unrecognized arguments')."""
    out = tmp_path / "d.ecsv"
    assert cli.main(["demo", "-o", str(out), "-q", "--providers", "cpu", "--threads", "1",
                     "--precision", "int8"]) == 0
    assert Table.read(out).meta["astromorph_model_precision"] == "int8"
    assert cli.main(["demo", "-o", str(out), "-q", "--overwrite", "--threads", "-1"]) == 2

"""The wheel holds the package, its data and every shipped model, and nothing else."""
import json
import shutil
import tarfile
import zipfile

import pytest

from conftest import REPO

#: What a wheel is built from (the rest of the checkout must not matter).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", ".gitignore", "astromorph", "models")


def _build_wheel(root, out):
    pytest.importorskip("hatchling")
    from hatchling.builders.wheel import WheelBuilder

    return next(WheelBuilder(str(root)).build(directory=str(out), versions=["standard"]))


def _expected_files(src):
    """Wheel paths of the package's modules and data, and of every file a model card names."""
    expected = {path.relative_to(src).as_posix() for path in (src / "astromorph").rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    expected.add("astromorph/models/README.md")
    for card_path in (src / "models").glob("*/card.json"):
        card = json.loads(card_path.read_text())
        files = {"card.json", "model.onnx"}
        if card.get("single_band_graph"):
            files.add(card["single_band_graph"]["file"])
        files |= {v["file"] for v in (card.get("variants") or {}).values()}
        expected |= {f"astromorph/models/{card_path.parent.name}/{f}" for f in files}
    return expected


#: Left-overs no wheel or sdist may ship: byte code, and what an interrupted run leaves
#: beside its output: training's export (model.tmp.onnx), single-band fold
#: (model.grey.tmp), card (tmpXXXX.json.tmp), int8 quantisation (a tmpXXXX/ folder) and
#: reports (.NAME.PID.tmp), and astromorph's own atomic writes (.astromorph-tmp-XXXX/).
LEFTOVERS = ("models/morphology/model.tmp.onnx", "models/morphology/model.grey.tmp",
             "models/morphology/tmpab12cd.json.tmp", "models/morphology/.card.json.123.tmp",
             "models/morphology/tmpq1w2e3/pre.onnx",
             "astromorph/data/.astromorph-tmp-x1y2/out.ecsv",
             "astromorph/__pycache__/stale.cpython-311.pyc")


def _checkout(tmp_path):
    """A copy of what a wheel is built from, and the wheel paths it must hold; then the
    `LEFTOVERS` added to it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    expected = _expected_files(src)
    for name in LEFTOVERS:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"partial")
    return src, expected


def test_wheel_holds_the_package_and_the_models_and_nothing_else(tmp_path):
    src, expected = _checkout(tmp_path)
    wheel = _build_wheel(src, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if ".dist-info/" not in n}
    assert names == expected, (sorted(names - expected), sorted(expected - names))


def test_sdist_leaves_out_the_leftovers(tmp_path):
    pytest.importorskip("hatchling")
    from hatchling.builders.sdist import SdistBuilder

    src, expected = _checkout(tmp_path)
    sdist = next(SdistBuilder(str(src)).build(directory=str(tmp_path / "dist"),
                                              versions=["standard"]))
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert not names & set(LEFTOVERS), sorted(names & set(LEFTOVERS))
    models = {f"astromorph/{n}" for n in names if n.startswith("models/")}
    assert models == {n for n in expected if n.startswith("astromorph/models/")}

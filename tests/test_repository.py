"""The repository keeps its promises: README commands, CI script, layout."""
import re

import pytest

from conftest import REPO

#: Checks of the repository itself; an unpacked sdist (PKG-INFO at its root) holds only the
#: package, its models, tests and docs, not .ci/, training/ or benchmarks/.
checkout_only = pytest.mark.skipif((REPO / "PKG-INFO").is_file(),
                                   reason="needs the repository checkout, not an sdist")


def _readme_commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .venv && [^\n]+)\n```", text)


def test_readme_has_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert any("astromorph demo" in c for c in commands)
    assert any("pytest" in c for c in commands)


@checkout_only
def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text()


@checkout_only
def test_design_card_layout():
    for path in ("pyproject.toml", "astromorph", "models", "training/pyproject.toml", "tests",
                 "docs", "benchmarks"):
        assert (REPO / path).exists(), path


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirement_name(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("-", "_")


def test_every_required_dependency_is_imported_by_the_package():
    """A dependency the package never imports belongs in an extra, not in every install."""
    imported = set()
    for path in (REPO / "astromorph").rglob("*.py"):
        imported |= set(re.findall(r"^\s*(?:import|from)\s+(\w+)", path.read_text(), re.M))
    required = [_requirement_name(r) for r in _pyproject()["project"]["dependencies"]]
    assert required and not set(required) - imported, "required but never imported"


# ------------------------------------------------------------- model cards vs files and reports
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


MODEL_DIRS = sorted(d for d in (REPO / "models").iterdir() if (d / "card.json").is_file())


def _card(d):
    return json.loads((d / "card.json").read_text())


def _listed_files(card):
    """File name -> (sha256, expected input shape) of every ONNX file a card names."""
    files = {"model.onnx": (card["sha256"], card["input"]["shape"])}
    grey = card.get("single_band_graph")
    if grey:
        files[grey["file"]] = (grey["sha256"], grey["input_shape"])
    for variant in (card.get("variants") or {}).values():
        files[variant["file"]] = (variant["sha256"], card["input"]["shape"])
    return files


@pytest.mark.parametrize("d", MODEL_DIRS, ids=lambda d: d.name)
def test_card_names_its_directory_and_every_onnx_file(d):
    card = _card(d)
    assert card["name"] == d.name
    files = _listed_files(card)
    assert set(files) == {p.name for p in d.glob("*.onnx")}, "ONNX file without a card entry"
    for name, (digest, _) in files.items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("d", MODEL_DIRS, ids=lambda d: d.name)
def test_card_fields_are_filled(d):
    card = _card(d)
    for key in ("summary", "description", "column_prefix", "licence"):
        assert card.get(key), key
    for key in ("name", "shape", "channels", "normalisation", "angular_size", "preprocessing"):
        assert card["input"].get(key), f"input.{key}"
    for key in ("data", "terms", "split", "command"):
        assert card["training"].get(key), f"training.{key}"
    for key in ("split", "command"):
        assert card["metrics"].get(key), f"metrics.{key}"


@pytest.mark.parametrize("d", MODEL_DIRS, ids=lambda d: d.name)
def test_card_inputs_and_outputs_are_the_graphs(d):
    """Input name and shape, output names and sizes (class lists) as in every ONNX file."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    card = _card(d)
    outputs = {o["name"]: o for o in card["outputs"]}
    for name, (_, shape) in _listed_files(card).items():
        graph = onnx.load(str(d / name)).graph
        inits = {i.name for i in graph.initializer}
        (inp,) = [i for i in graph.input if i.name not in inits]
        assert inp.name == card["input"]["name"], name
        dims = [x.dim_value for x in inp.type.tensor_type.shape.dim[1:]]
        assert dims == list(shape), name
        assert {o.name for o in graph.output} == set(outputs), name
        session = ort.InferenceSession(str(d / name), providers=["CPUExecutionProvider"])
        result = session.run(None, {inp.name: np.zeros((2, *shape), np.float32)})
        for out, value in zip(session.get_outputs(), result):
            spec = outputs[out.name]
            size = len(spec["labels"]) if spec.get("labels") else spec.get("size")
            assert value.shape == ((2, size) if size else (2,)), (name, out.name)
            if spec.get("names"):
                assert len(spec["names"]) == len(spec["labels"])


@checkout_only
@pytest.mark.parametrize("d", MODEL_DIRS, ids=lambda d: d.name)
def test_report_measured_the_shipped_file(d):
    """Where the report records the sha256 of the file it measured, it is the card's; where
    it records only the file's size (real-bogus), that is the shipped file's size."""
    card = _card(d)
    report = json.loads((REPO / "training" / "reports" / d.name / "metrics.json").read_text())
    recorded = report.get("onnx_sha256") or report.get("sha256")
    size = (report.get("onnx") or {}).get("size_bytes")
    assert recorded or size, f"{d.name}: the report records neither the sha256 nor the size"
    if recorded:
        assert recorded == card["sha256"]
    if size:
        assert size == (d / "model.onnx").stat().st_size == card["file_size_bytes"]
    for precision, variant in (card.get("variants") or {}).items():
        if (report.get(precision) or {}).get("onnx_sha256"):
            assert report[precision]["onnx_sha256"] == variant["sha256"]


def _numbers(obj, path=""):
    """(path, value) of every number in a JSON object, booleans left out."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _as_quoted(value, quoted):
    """Whether ``quoted`` is ``value``, or ``value`` rounded to ``quoted``'s decimals."""
    text = repr(quoted)
    if value == quoted or "e" in text:
        return value == quoted
    return round(value, len(text.split(".")[1]) if "." in text else 0) == quoted


@checkout_only
@pytest.mark.parametrize("d", MODEL_DIRS, ids=lambda d: d.name)
def test_card_metrics_are_the_reports(d):
    """Every number of the card's held-out metrics (and of its variants' metrics) is in the
    training report of the model, as recorded or rounded: a card edited by hand, or a report
    rewritten without the card, shows here."""
    card = _card(d)
    report = [v for _, v in _numbers(json.loads(
        (REPO / "training" / "reports" / d.name / "metrics.json").read_text()))]
    quoted = list(_numbers(card["metrics"], "metrics"))
    for name, variant in (card.get("variants") or {}).items():
        quoted += _numbers(variant.get("metrics") or {}, f"variants.{name}.metrics")
    missing = [f"{path} = {value}" for path, value in quoted
               if not any(_as_quoted(v, value) for v in report)]
    assert not missing, f"not in training/reports/{d.name}/metrics.json: {missing}"


def test_models_page_is_generated_from_the_cards(tmp_path):
    """docs/models.md is what docs/make_models_page.py writes from the cards today."""
    shutil.copytree(REPO / "models", tmp_path / "models")
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "make_models_page.py", tmp_path / "docs")
    subprocess.run([sys.executable, str(tmp_path / "docs" / "make_models_page.py")], check=True,
                   capture_output=True)
    assert (tmp_path / "docs" / "models.md").read_text() == \
        (REPO / "docs" / "models.md").read_text(), "run python docs/make_models_page.py"


# ------------------------------------------------------------------ API reference page
def _api_page_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_api_page",
                                                  REPO / "docs" / "make_api_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_generated_from_the_package(tmp_path):
    """docs/api.md is what docs/make_api_page.py writes from the package today."""
    subprocess.run([sys.executable, str(REPO / "docs" / "make_api_page.py"),
                    str(tmp_path / "api.md")], check=True, capture_output=True)
    assert (tmp_path / "api.md").read_text() == (REPO / "docs" / "api.md").read_text(), \
        "run python docs/make_api_page.py"


def test_every_public_name_has_a_summary():
    """Every name in the public modules' __all__ (and every public method, property and
    enum member of their classes) has a docstring (or ``#:`` comment) summary."""
    entries = _api_page_module().entries()
    listed = {(e["module"], e["name"]) for e in entries}
    import astromorph.embeddings
    import astromorph.exceptions
    import astromorph.preprocessing

    for module in (astromorph, astromorph.preprocessing, astromorph.embeddings,
                   astromorph.exceptions):
        assert {(module.__name__, n) for n in module.__all__} <= listed
    missing = [f"{e['module']}.{e['name']}" for e in entries if not e["summary"].strip()]
    missing += [f"{e['module']}.{e['name']}: {text}" for e in entries
                for _, text, summary in e["members"] if not summary.strip()]
    assert not missing, f"no docstring summary: {missing}"

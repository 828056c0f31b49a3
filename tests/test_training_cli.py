"""The training command line without the data: every command line the docs show parses,
and missing data, packages or checkpoints stop in one line naming the path and what to do.

Needs torch and the training/ subproject, not the real data (these are the errors of people
who do not have it): nothing here trains.
"""
import importlib.util
import json
import sys

import pytest

from conftest import DATA_DIR, REPO, requires_data

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch"),
    pytest.mark.skipif(importlib.util.find_spec("astromorph_training") is None,
                       reason="needs the training/ subproject installed"),
]

MODELS = ["morphology", "radio-morphology", "real-bogus", "embedding", "morphology-gz2"]



#: Commands in the pre-registrations that ran with an option since removed (their record says
#: so): kept as written there, not checked against today's parser.
REMOVED_OPTIONS = {"real-bogus train --average-best-last"}


def _documented_commands():
    """``(file, command)`` for every ``astromorph_training`` command line the documentation
    shows: README.md, docs/, the model cards (every string: ``training.command``, the
    metrics' measured-by commands, the initialisation) and the training reports, in code
    blocks (``\\`` continuations joined) and in inline code (``python -m astromorph_training
    ...`` or a bare ``MODEL STEP ...``). Placeholders become values: ``MODEL`` or ``<name>``
    each model, ``N`` 1, ``DIR`` a folder, ``[--opt X]`` the option given."""
    import re

    from astromorph_training.__main__ import MODULES, STEPS

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        for value in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
            yield from strings(value)

    models = "|".join(sorted(map(re.escape, MODULES), key=len, reverse=True))
    bare = re.compile(rf"(?:{models}|MODEL|<name>) (?:{'|'.join(STEPS)})\b")
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "models").glob("*/card.json")),
             *sorted((REPO / "training" / "reports").glob("*/*.md"))]
    found = []
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            spans = [s for value in strings(json.loads(text)) for s in re.split(r"[`';]", value)]
        else:
            text = re.sub(r"\\\n\s*", " ", text)
            spans = [line for block in re.findall(r"```\w*\n(.*?)```", text, flags=re.S)
                     for line in block.splitlines()]
            spans += re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for span in spans:
            for part in span.split(";"):
                part = part.split("#")[0]
                if "python -m astromorph_training" in part:
                    part = part.split("python -m astromorph_training", 1)[1]
                elif not bare.match(part):
                    continue
                words = part.replace("[", " ").replace("]", " ").split()
                if not words or words[0] == "...":  # README: `python -m astromorph_training ... --data-dir`
                    continue
                words = [{"N": "1", "DIR": "runs/a"}.get(w, w) for w in words if w != "..."]
                for model in (MODULES if words[0] in ("MODEL", "<name>") else [words[0]]):
                    for step in words[1].split("|"):
                        found.append((path.relative_to(REPO), " ".join([model, step, *words[2:]])))
    return found


def test_documented_commands_parse(capsys):
    """Every command line the docs, cards and reports show parses with today's command line
    (checked against the parser, nothing is run): a renamed or removed option shows here."""
    from astromorph_training.__main__ import _check_step_options, build_parser

    commands = _documented_commands()
    cards = {cmd for path, cmd in commands if path.name == "card.json"}
    for model in MODELS:  # the cards' training commands are among those checked
        card = json.loads((REPO / "models" / model / "card.json").read_text())
        for cmd in card["training"]["command"].split(";"):
            assert cmd.strip().removeprefix("python -m astromorph_training ") in cards
    assert any(path.name.startswith("preregistration") for path, _ in commands)
    failures = []
    for path, cmd in commands:
        if any(cmd.startswith(removed) for removed in REMOVED_OPTIONS):
            continue
        words = cmd.split()
        try:
            parser = build_parser(words[0])
            _check_step_options(parser, parser.parse_args(words))
        except SystemExit as exc:
            if exc.code != 0:  # 0: a documented ``--help``
                failures.append(f"{path}: {cmd}: {capsys.readouterr().err.strip()}")
    assert not failures, "\n".join(failures)


def _one_line_exit(argv):
    """``main(argv)``'s one-line refusal: the `SystemExit` message (exit status 1)."""
    from astromorph_training import __main__

    with pytest.raises(SystemExit) as exc:
        __main__.main(argv)
    message = exc.value.code
    assert isinstance(message, str) and "\n" not in message, message  # printed as one line, status 1
    return message


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    """Without the data (a missing --data-dir, $ASTROMORPH_DATA set to nonsense, a folder
    without gz1/), every command stops in one line that names the path and what to do."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASTROMORPH_DATA", raising=False)
    message = _one_line_exit(["morphology", "train", "--data-dir", str(tmp_path / "nowhere")])
    assert str(tmp_path / "nowhere") in message and "--data-dir" in message
    monkeypatch.setenv("ASTROMORPH_DATA", "nonsense")
    message = _one_line_exit(["real-bogus", "train", "--smoke"])
    # the path came from the environment variable: the message says so
    assert str(tmp_path / "nonsense") in message and "$ASTROMORPH_DATA" in message
    (tmp_path / "empty").mkdir()
    for model, missing in (("morphology", "gz1/labels.csv"), ("morphology-gz2", "gz2/votes.csv"),
                           ("real-bogus", "ztf_alerts")):
        message = _one_line_exit([model, "train", "--smoke", "--data-dir", str(tmp_path / "empty"),
                                  "--out-dir", str(tmp_path / "out")])
        assert f"{model} train: " in message and str(tmp_path / "empty" / missing) in message
        assert "--data-dir" in message and "earlier steps" not in message  # train is the first
    (tmp_path / "a-file").write_text("")
    message = _one_line_exit(["morphology", "evaluate", "--data-dir", str(tmp_path),
                              "--out-dir", str(tmp_path / "a-file")])
    assert str(tmp_path / "a-file") in message and "--out-dir" in message


def test_missing_firstgalaxydata_is_one_line(tmp_path, monkeypatch):
    """radio-morphology without the firstgalaxydata package (and no --first-dir, no
    DATA/firstgalaxydata/) names what it looked for and how to get it."""
    import argparse

    from astromorph_training import radio

    monkeypatch.setitem(sys.modules, "firstgalaxydata", None)  # as if not installed
    with pytest.raises(SystemExit) as exc:
        radio._first_dir(argparse.Namespace(first_dir=None, data_dir=tmp_path))
    message = exc.value.code
    assert "\n" not in message and str(tmp_path / "firstgalaxydata") in message
    assert "pip install --no-deps firstgalaxydata" in message and "--first-dir" in message


@pytest.mark.parametrize("where", ["nowhere", "empty"])
def test_wrong_first_dir_names_first_dir(where, tmp_path):
    """``radio-morphology train --first-dir DIR`` with no archive in DIR (a typo, or a
    folder without them) stopped with 'No such file or directory: DIR/galaxy_data.zip (is
    --data-dir (or $ASTROMORPH_DATA) the data folder?)', blaming an option that was
    right. It now names --first-dir and what the folder must hold, before any data."""
    (tmp_path / "empty").mkdir()
    message = _one_line_exit(["radio-morphology", "train", "--smoke", "--first-dir",
                              str(tmp_path / where), "--data-dir", str(tmp_path)])
    assert "--first-dir" in message and str(tmp_path / where) in message, message
    assert "galaxy_data" in message and "--data-dir" not in message, message


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("step", ["evaluate", "export"])
def test_steps_before_train_are_one_line(model, step, tmp_path, monkeypatch):
    """``evaluate`` or ``export`` with no checkpoint stops at once, in one line naming the
    missing checkpoint and the train command (radio-morphology first read or built the
    whole data cache, minutes, before it said so)."""
    import importlib

    from astromorph_training.__main__ import MODULES

    module = importlib.import_module(f"astromorph_training.{MODULES[model]}")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the checkpoint was looked for")

    monkeypatch.setattr(module, "load_dataset", no_data, raising=False)
    monkeypatch.chdir(tmp_path)
    message = _one_line_exit([model, step, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path)])
    assert str(tmp_path / "training" / "checkpoints" / model) in message
    assert f"{model} train" in message, message


def test_unreadable_gz2_init_is_one_line(tmp_path):
    """morphology-gz2 ``--init``: a missing file, a folder, a file that is no checkpoint or a
    checkpoint without network weights is one line naming it (all but the first were
    IsADirectory, pickle or AttributeError tracebacks)."""
    from astromorph_training import gz2

    import torch

    (tmp_path / "notes.txt").write_text("# not a checkpoint\n")
    torch.save({"epoch": 3}, tmp_path / "other.pt")  # a torch file without network weights
    for init in (tmp_path / "missing.pt", tmp_path, tmp_path / "notes.txt", tmp_path / "other.pt"):
        with pytest.raises(SystemExit) as exc:
            gz2._init_checkpoint(str(init), tmp_path)
        message = exc.value.code
        assert isinstance(message, str) and "\n" not in message and f"--init {init}" in message
        assert "--init none" in message


def test_missing_dependency_is_one_line(monkeypatch):
    """A model whose module cannot import a dependency (torch missing, or an ``astromorph``
    that is not this checkout's, as ``pip install ./training`` alone takes one of that name
    from the package index) stops in one line naming the module and the install command
    (it was a ModuleNotFoundError or ImportError traceback)."""
    import types

    from astromorph_training import __main__

    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "astromorph_training.morphology", raising=False)
    with pytest.raises(SystemExit) as exc:
        __main__.main(["morphology", "train"])
    message = exc.value.code
    assert isinstance(message, str) and "\n" not in message
    assert "'torch'" in message and "pip install" in message and "./training" in message
    # an astromorph without this checkout's preprocessing (here: an empty module)
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "astromorph_training.morphology", raising=False)
    monkeypatch.setitem(sys.modules, "astromorph.preprocessing._optical",
                        types.ModuleType("astromorph.preprocessing._optical"))
    with pytest.raises(SystemExit) as exc:
        __main__.main(["morphology", "train"])
    message = exc.value.code
    assert "\n" not in message and "astromorph.preprocessing._optical" in message
    assert "not the version this checkout needs" in message and "./training" in message


@pytest.mark.parametrize("argv", [
    "morphology train --batch-size 0", "morphology train --widths 0 8 8 8",
    "morphology train --stamp-size -64", "morphology-gz2 train --batch-size 0",
    "radio-morphology train --batch-size 0", "radio-morphology train --arch d4 --d4-widths 8 0",
    "embedding train --batch-size -1", "embedding train --compare --compare-epochs 0",
    "embedding train --compare-images 0", "embedding evaluate --probe-draws 0",
    "embedding evaluate --cnn-draws 0", "real-bogus train --processes 0",
    "real-bogus train --processes -2", "real-bogus train --cycles 0",
    "real-bogus train --batch-size 0", "real-bogus train --n-train -5",
    "real-bogus train --n-val 0", "real-bogus evaluate --n-test 0",
    "real-bogus evaluate --test-seed 1 --n-fresh-test 0",
    "real-bogus average --sources a b --bn-samples 0"])
def test_counts_below_one_are_refused_by_the_parser(argv, capsys):
    """Counts of zero or less stop on the command line (exit status 2, one line naming the
    option and the value) for every model: before, ``--processes 0`` silently trained one
    process, ``--n-train -5`` and a smoke run's ``--batch-size 0`` were silently ignored, and
    ``radio-morphology --batch-size 0`` and ``morphology --widths 0 ...`` were tracebacks
    from inside the training loop."""
    from astromorph_training.__main__ import build_parser

    words = argv.split()
    with pytest.raises(SystemExit) as exc:
        build_parser(words[0]).parse_args(words)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    bad = next(w for w in reversed(words) if w.lstrip("-").isdigit() and int(w) < 1)
    assert "\n" not in err and "must be at least 1" in err and bad in err, err


@pytest.mark.parametrize("argv", [
    "radio-morphology train --stage4 -1", "radio-morphology train --stage0 -8",
    "morphology-gz2 train --student-epochs -1", "morphology train --seed -1",
    "embedding build --seed -3", "real-bogus evaluate --test-seed -5",
    "real-bogus compare --val-seed -2"])
def test_negative_integers_are_refused_by_the_parser(argv, capsys):
    """Integer options where 0 means something (none, no student stage, seed 0) took
    negative values: ``--stage4 -1`` and ``--student-epochs -1`` went on as if 0 or failed
    inside torch, a negative seed was a ValueError traceback from numpy. They now stop on
    the command line (exit status 2, one line naming the value); 0 is accepted."""
    from astromorph_training.__main__ import build_parser

    words = argv.split()
    with pytest.raises(SystemExit) as exc:
        build_parser(words[0]).parse_args(words)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "must be at least 0" in err and words[-1] in err, err
    args = build_parser(words[0]).parse_args([*words[:-1], "0"])
    assert getattr(args, words[-2].lstrip("-").replace("-", "_")) == 0


@pytest.mark.parametrize("seed", ["4294967296", "99999999999999999999"])
def test_seeds_numpy_cannot_take_are_refused_by_the_parser(seed, capsys):
    """``--seed 4294967296`` parsed and then failed inside the step with numpy's ValueError
    traceback (its global seeding takes 0 to 2**32 - 1): now one line, exit status 2."""
    from astromorph_training.__main__ import build_parser

    words = ["morphology", "train", "--seed", seed]
    with pytest.raises(SystemExit) as exc:
        build_parser("morphology").parse_args(words)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "must be at most 4294967295" in err and seed in err, err
    assert build_parser("morphology").parse_args([*words[:-1], "4294967295"]).seed == 2 ** 32 - 1


#: Options that take a value and have no default: without them their step does not do what
#: they are for (``average`` stops without its ``--sources``, ``evaluate`` draws no fresh
#: test set without ``--test-seed``).
NO_DEFAULT = {("radio-morphology", "--sources"), ("real-bogus", "--sources"),
              ("real-bogus", "--test-seed")}


@pytest.mark.parametrize("model", [None, *MODELS])
def test_every_option_says_its_default(model):
    """Every option that takes a value says its default in ``--help``: ``morphology
    --batch-size``, ``radio-morphology --lr``, ``embedding --probe-draws`` and others had a
    default the help did not show. An option whose parser default is a value names that
    value next to the word default; one whose default is None (the step works it out:
    ``--epochs``, ``--out-dir``, ``embedding --lr``) says what it is, except the
    `NO_DEFAULT` options. Flags are off unless given, and are not checked. ``--help``
    does not depend on the step, so one parser per model covers every step."""
    from astromorph_training.__main__ import build_parser

    parser = build_parser(model)
    formatter = parser._get_formatter()
    options = set()
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue  # positionals, flags (store_true) and --help
        flag = action.option_strings[-1]
        options.add(flag)
        text = formatter._expand_help(action) if action.help else ""
        value = action.default
        if value is None:
            ok = (model, flag) in NO_DEFAULT or "default" in text
        else:
            shown = [str(value)]
            if isinstance(value, (list, tuple)):
                shown += [" ".join(map(str, value)), ", ".join(map(str, value))]
            ok = "default" in text and any(s in text for s in shown)
        if not ok:
            missing.append(f"{flag} (default {value!r}): {text!r}")
    assert not missing, "\n".join(missing)
    assert {flag for m, flag in NO_DEFAULT if m == model} <= options  # none stale


@pytest.mark.parametrize("folds, bad", [("x", "'x'"), ("9", "9"), ("-1", "-1"), ("0,,2", "''")])
def test_radio_folds_out_of_range_are_refused_by_the_parser(folds, bad, capsys):
    """``radio-morphology train --cv --folds`` takes fold numbers 0-4: a word was a
    ValueError traceback, 9 an IndexError traceback after the data were read, and -1
    silently trained fold 4 into a folder named cv-1."""
    from astromorph_training.__main__ import build_parser

    argv = ["radio-morphology", "train", "--cv", "--folds", folds]
    with pytest.raises(SystemExit) as exc:
        build_parser("radio-morphology").parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--folds" in err and bad in err and "0 to 4" in err, err
    args = build_parser("radio-morphology").parse_args(argv[:-1] + ["4,0,2"])
    assert args.folds == [4, 0, 2]


def test_options_a_model_would_ignore_are_refused(tmp_path, capsys):
    """``--folds`` without ``--cv`` and ``--new-split`` for radio-morphology (whose split is
    the one in firstgalaxydata's archives) were accepted and did nothing. Both are refused
    by the command line (exit status 2, one line), before any data is read: ``--folds``
    without ``--cv`` stopped with status 1 inside ``train`` until it became one of radio's
    ``OPTION_NEEDS``."""
    from astromorph_training import __main__

    with pytest.raises(SystemExit) as exc:
        __main__.build_parser("radio-morphology").parse_args(
            ["radio-morphology", "train", "--new-split"])
    assert exc.value.code == 2 and "--new-split" in capsys.readouterr().err
    assert "--new-split" not in __main__.build_parser("radio-morphology").format_help()
    for model in ("morphology", "morphology-gz2", "embedding", "real-bogus"):
        assert __main__.build_parser(model).parse_args([model, "train", "--new-split"]).new_split
    with pytest.raises(SystemExit) as exc:
        __main__.main(["radio-morphology", "train", "--folds", "1", "--smoke",
                       "--out-dir", str(tmp_path), "--data-dir", str(tmp_path)])
    assert exc.value.code == 2, exc.value.code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--folds is read only with --cv" in err, err


@pytest.mark.parametrize("argv, option, steps", [
    ("real-bogus train --test-seed 5", "--test-seed", "evaluate"),
    ("real-bogus evaluate --candidates a b", "--candidates", "compare"),
    ("real-bogus build --val-seed 7", "--val-seed", "compare"),
    ("real-bogus train --sources a b", "--sources", "average"),
    ("real-bogus calibrate --ensemble", "--ensemble", "average"),
    ("real-bogus evaluate --bn-samples 100", "--bn-samples", "average"),
    ("real-bogus train --n-fresh-test 100", "--n-fresh-test", "evaluate"),
    ("radio-morphology train --sources a b", "--sources", "average"),
    ("radio-morphology export --throughput", "--throughput", "evaluate")])
def test_options_of_another_step_are_refused(argv, option, steps, tmp_path, capsys):
    """An option only one step reads, given to another (``real-bogus train --test-seed 5``,
    ``radio-morphology train --sources ...``), was accepted and did nothing: the step ran as
    if it had not been given. It now stops in one line (exit status 2) naming the option and
    the step that reads it."""
    from astromorph_training import __main__

    # no data folder: without the check the step stops there (another message), never runs
    with pytest.raises(SystemExit) as exc:
        __main__.main([*argv.split(), "--smoke", "--data-dir", str(tmp_path / "nowhere")])
    assert exc.value.code == 2, exc.value.code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and option in err and steps in err, err


def _step_options_refusal(argv, capsys):
    """The one-line refusal (exit status 2) of the training command line ``argv`` by
    `_check_step_options`, parsed only: nothing runs."""
    from astromorph_training.__main__ import _check_step_options, build_parser

    words = [*argv.split(), "--smoke", "--data-dir", "nowhere-at-all"]
    parser = build_parser(words[0])
    args = parser.parse_args(words)
    with pytest.raises(SystemExit) as exc:
        _check_step_options(parser, args)
    assert exc.value.code == 2, exc.value.code
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, option, steps", [
    ("morphology evaluate --lr 0.1", "--lr", "train"),
    ("morphology export --widths 8 8 8 8", "--widths", "train"),
    ("morphology evaluate --gz2-labels", "--gz2-labels", "train"),
    ("morphology train --tta 4", "--tta", "evaluate / export"),
    ("morphology evaluate --stamp-size 32", "--stamp-size", "train"),
    ("morphology export --stamp-size 32", "--stamp-size", "train"),
    ("morphology-gz2 evaluate --student-epochs 3", "--student-epochs", "train"),
    ("morphology-gz2 export --init none", "--init", "train"),
    ("morphology-gz2 train --tta 4", "--tta", "evaluate / export"),
    ("embedding evaluate --compare", "--compare", "train"),
    ("embedding export --compare-epochs 2", "--compare-epochs", "train"),
    ("embedding evaluate --method byol", "--method", "train"),
    ("embedding train --probe-draws 3", "--probe-draws", "evaluate"),
    ("embedding export --cnn-draws 2", "--cnn-draws", "evaluate"),
    ("embedding train --tta 4", "--tta", "evaluate / export"),
    ("morphology evaluate --epochs 5", "--epochs", "train"),
    ("morphology-gz2 export --epochs 5", "--epochs", "train"),
    ("embedding evaluate --epochs 5", "--epochs", "train"),
    ("radio-morphology average --epochs 5", "--epochs", "train"),
    ("real-bogus calibrate --epochs 5", "--epochs", "train")])
def test_options_of_another_step_are_refused_for_every_model(argv, option, steps, capsys):
    """morphology, morphology-gz2 and embedding had no `STEP_OPTIONS`: ``embedding train
    --probe-draws 3`` or ``morphology evaluate --lr 0.1`` were accepted and did nothing, as
    was the global ``--epochs`` outside train (``morphology evaluate --epochs 5``).
    They now stop on the command line (exit status 2, one line naming the option and the
    step that reads it). Only parsed here: nothing runs."""
    err = _step_options_refusal(argv, capsys)
    assert "\n" not in err and option in err, err
    model, step = argv.split()[:2]
    assert f"{model} {steps}, not of {step}" in err, err


@pytest.mark.parametrize("argv, option", [
    ("radio-morphology evaluate --stage4 128", "--stage4"),
    ("radio-morphology export --arch d4", "--arch"),
    ("radio-morphology evaluate --lr 0.1", "--lr"),
    ("radio-morphology export --mixup 0.2", "--mixup"),
    ("radio-morphology average --sources a b --augment full", "--augment"),
    ("radio-morphology evaluate --cv", "--cv"),
    ("radio-morphology evaluate --restart", "--restart"),
    ("real-bogus evaluate --lr 0.1", "--lr"),
    ("real-bogus calibrate --cycles 2", "--cycles"),
    ("real-bogus compare --amp bf16", "--amp"),
    ("real-bogus average --sources a b --processes 2", "--processes"),
    ("real-bogus evaluate --batch-size 64", "--batch-size"),
    ("real-bogus export --restart", "--restart"),
    ("real-bogus evaluate --threads 2", "--threads"),
    ("real-bogus average --sources a b --threads 2", "--threads")])
def test_train_options_of_radio_and_real_bogus_are_refused_elsewhere(argv, option, capsys):
    """radio-morphology and real-bogus listed only their evaluate / compare / average
    options in `STEP_OPTIONS`: their recipe options (``radio-morphology evaluate --stage4
    128``, ``export --arch d4``, ``real-bogus evaluate --lr 0.1``, ``calibrate --cycles
    2``) were accepted and did nothing, unlike the other models' (docs/training.md: the
    recipe options belong to train). So was ``real-bogus --threads`` outside train: the
    training processes are the only ones that set it (calibrate and average run on one
    thread, evaluate and export on torch's default). Only parsed here: nothing runs."""
    err = _step_options_refusal(argv, capsys)
    model, step = argv.split()[:2]
    assert "\n" not in err and f"{option} is an option of {model} train" in err, err
    assert f"not of {step}" in err, err


def test_real_bogus_regenerate_is_refused_where_no_cached_set_is_loaded(capsys):
    """``real-bogus export --regenerate`` was accepted and did nothing: export loads no
    simulated set (``--regenerate`` re-simulates the cached sets a step loads). The steps
    that load sets still take it. Only parsed here: nothing runs."""
    err = _step_options_refusal("real-bogus export --regenerate", capsys)
    assert "--regenerate is an option of real-bogus train / average / calibrate / evaluate" \
        " / compare" in err and "not of export" in err, err
    from astromorph_training import realbogus

    assert set(realbogus.STEP_OPTIONS["regenerate"]) == {
        "train", "average", "calibrate", "evaluate", "compare"}


@pytest.mark.parametrize("argv, option, needs", [
    ("radio-morphology train --d4-widths 2 4 8 16 64", "--d4-widths", "--arch d4"),
    ("radio-morphology train --arch plain --d4-widths 2 4", "--d4-widths", "--arch d4"),
    ("radio-morphology train --arch d4 --stage4 128", "--stage4", "--arch plain"),
    ("radio-morphology build --arch d4 --stage0 16", "--stage0", "--arch plain"),
    ("radio-morphology train --arch d4 --peak-norm", "--peak-norm", "--arch plain")])
def test_radio_network_options_of_the_other_network_are_refused(argv, option, needs, capsys):
    """``radio-morphology train --d4-widths ...`` without ``--arch d4`` trained the plain
    network (for 150 epochs) as if the widths had not been given, and ``--arch d4`` ignored
    ``--stage4``, ``--stage0`` and ``--peak-norm`` (options of the plain RadioNet). They now
    stop on the command line (exit status 2, one line naming the value they need). Only
    parsed here: nothing runs."""
    err = _step_options_refusal(argv, capsys)
    assert "\n" not in err and f"{option} is read only with {needs}" in err, err


def test_morphology_stamp_size_is_the_checkpoints(tmp_path, monkeypatch):
    """``morphology evaluate --stamp-size 32`` on a 64 px checkpoint calibrated the network
    on 32 px stamps and then failed in onnxruntime; ``export --stamp-size 32`` (no
    metrics.json) wrote a card calibrated on them. ``--stamp-size`` is now train's only
    (refused elsewhere, above), evaluate and export load the data at the checkpoint's
    size, and ``build`` with another size stops before training, which evaluate would
    refuse afterwards. Nothing trains here: the check comes before the data."""
    import argparse

    from astromorph_training import morphology

    message = _one_line_exit(["morphology", "build", "--stamp-size", "48", "--smoke",
                              "--data-dir", str(tmp_path)])  # no gz1/ there
    assert "--stamp-size 48" in message and "64 px" in message, message

    sizes = []

    def load_dataset(args, *, size=None, trained=None):
        sizes.append(size)
        raise KeyboardInterrupt  # stop there

    monkeypatch.setattr(morphology, "load_trained", lambda args: (None, {"stamp_size": 48}))
    monkeypatch.setattr(morphology, "load_dataset", load_dataset)
    # a command line's size (none now reaches evaluate or export) would not be used
    args = argparse.Namespace(smoke=False, threads=1, seed=0, stamp_size=32, tta=2,
                              out_dir=tmp_path, data_dir=tmp_path)
    for step in (morphology.evaluate, morphology.export):  # export: no metrics.json
        with pytest.raises(KeyboardInterrupt):
            step(args)
    assert sizes == [48, 48]


@pytest.mark.parametrize("argv, option, needs", [
    ("embedding train --compare-epochs 2", "--compare-epochs", "--compare or --compare-only"),
    ("embedding build --compare-images 100", "--compare-images", "--compare or --compare-only"),
    ("embedding train --methods simclr", "--methods", "--compare or --compare-only"),
    ("morphology-gz2 train --pseudo-tta 2", "--pseudo-tta", "--student-epochs"),
    ("morphology-gz2 train --student-from-teacher", "--student-from-teacher",
     "--student-epochs"),
    ("morphology-gz2 train --student-epochs 3 --student-lr 0.1", "--student-lr",
     "--student-from-teacher"),
    ("morphology-gz2 train --student-epochs 0 --pseudo-tta 2", "--pseudo-tta",
     "--student-epochs"),
    ("radio-morphology train --folds 1", "--folds", "--cv"),
    ("radio-morphology build --folds 0,2 --arch d4", "--folds", "--cv"),
    ("real-bogus evaluate --n-fresh-test 100", "--n-fresh-test", "--test-seed"),
    ("real-bogus build --n-fresh-test 48000", "--n-fresh-test", "--test-seed")])
def test_options_without_the_option_they_need_are_refused(argv, option, needs, capsys):
    """``embedding train --compare-epochs 2`` without ``--compare``, ``morphology-gz2 train
    --pseudo-tta 2`` or ``--student-lr 0.1`` without a student stage (or a student started
    from the teacher) were accepted and did nothing, as was ``real-bogus evaluate
    --n-fresh-test`` without the ``--test-seed`` draw it sizes. They now stop on the
    command line (exit status 2, one line naming the option they need), as radio's
    ``--folds`` without ``--cv``. Only parsed here: nothing runs."""
    err = _step_options_refusal(argv, capsys)
    assert "\n" not in err and f"{option} is read only with {needs}" in err, err


def test_options_that_another_makes_unread_are_refused_with_it(capsys):
    """``real-bogus average --ensemble --bn-samples 10`` was accepted and did nothing: an
    ensemble keeps each network's own batch-norm statistics, so none are recomputed. A
    module's ``OPTION_CONFLICTS`` names such pairs; given together they stop on the command
    line (exit status 2, one line naming both). Without ``--ensemble`` the option is read.
    Only parsed here: nothing runs."""
    err = _step_options_refusal("real-bogus average --sources a b --ensemble --bn-samples 10",
                                capsys)
    assert "\n" not in err and "--bn-samples is not read with --ensemble" in err, err
    from astromorph_training.__main__ import _check_step_options, build_parser

    words = "real-bogus average --sources a b --bn-samples 10 --smoke".split()
    parser = build_parser("real-bogus")
    _check_step_options(parser, parser.parse_args(words))  # no refusal


@pytest.mark.parametrize("step", ["evaluate", "calibrate", "average --sources DIR"])
def test_real_bogus_steps_after_train_need_its_seed(step, tmp_path, monkeypatch):
    """``real-bogus train --seed 3`` then ``evaluate`` (``calibrate``, or ``average`` of its
    checkpoints) without ``--seed`` drew the held-out alerts, host galaxies and simulations
    of seed 0, whose test and validation sets hold seed 3's training sky. The steps now
    stop in one line naming both seeds. Nothing runs: the run is a calibration.json without
    its network."""
    from astromorph_training import realbogus

    monkeypatch.setattr(realbogus.common, "smoke_root", lambda name: tmp_path)
    ckpt = realbogus.common.checkpoint_dir("real-bogus", root=tmp_path)
    ckpt.mkdir(parents=True, exist_ok=True)  # checkpoint_dir may make it
    (ckpt / "calibration.json").write_text(json.dumps({"seed": 3}))
    words = step.replace("DIR", str(tmp_path)).split()
    message = _one_line_exit(["real-bogus", *words, "--smoke", "--data-dir", str(tmp_path)])
    assert "--seed 0" in message and "--seed 3" in message, message


def _real_bogus_run(root, seed):
    """A fabricated real-bogus run folder: its ``calibration.json`` records ``seed``."""
    from astromorph_training import realbogus

    ckpt = realbogus.common.checkpoint_dir("real-bogus", root=root)
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "calibration.json").write_text(json.dumps({"seed": seed}))
    (root.parent / "no-data").mkdir(exist_ok=True)  # a data folder without the data
    return root


@pytest.mark.parametrize("val_seed", [[], ["--val-seed", "5"]])
def test_real_bogus_compare_refuses_candidates_of_another_seed(val_seed, tmp_path):
    """``compare --candidates A B`` scored every candidate on the validation sky of the
    command line's ``--seed`` (also with ``--val-seed``, which redraws the simulations on
    that sky): a candidate trained with ``--seed 3`` was scored on sims whose sky and
    galaxies it had trained on. Candidates need one common validation set, so one whose
    seed is not ``--seed`` is refused, in one line naming it and both seeds, before any
    data are read (here there are none)."""
    good = _real_bogus_run(tmp_path / "a", 0)
    bad = _real_bogus_run(tmp_path / "b", 3)
    message = _one_line_exit(["real-bogus", "compare", "--candidates", str(good), str(bad),
                              *val_seed, "--data-dir", str(tmp_path / "no-data"),
                              "--out-dir", str(tmp_path)])
    assert str(bad) in message and "--seed 0" in message and "--seed 3" in message, message
    assert str(good) not in message, message


def test_real_bogus_compare_refuses_a_seed_the_shipped_model_trained_on(tmp_path):
    """The shipped model (trained with the default seed 0, its card's ``training.command``)
    is scored on the same validation set: ``compare --seed 3`` put seed 0's training sky
    into it, so candidates of seed 3 have no common set with it: refused."""
    run = _real_bogus_run(tmp_path / "a", 3)
    message = _one_line_exit(["real-bogus", "compare", "--candidates", str(run), "--seed", "3",
                              "--data-dir", str(tmp_path / "no-data"), "--out-dir", str(tmp_path)])
    assert "shipped" in message and "--seed 0" in message and "--seed 3" in message, message


def test_real_bogus_average_refuses_sources_of_another_seed(tmp_path):
    """``average --sources A B --seed 3``: only the last source's seed was checked, so a
    first source trained with seed 0 was averaged and then calibrated on seed 3's
    validation sims, which hold seed 0's training sky. Every source's ``last.pt`` must
    record ``--seed``."""
    from astromorph_training import realbogus

    sources = []
    for name, seed in (("a", 0), ("b", 3)):
        root = _real_bogus_run(tmp_path / name, seed)
        ckpt = realbogus.common.checkpoint_dir("real-bogus", root=root)
        (ckpt / "history.json").write_text("[]")
        realbogus.common.save_checkpoint(
            {"model": {}, "epoch": 0, "recipe": {"seed": str(seed)}}, ckpt / "last.pt",
            model="real-bogus")
        sources.append(str(root))
    message = _one_line_exit(["real-bogus", "average", "--sources", *sources, "--seed", "3",
                              "--data-dir", str(tmp_path / "no-data"), "--out-dir", str(tmp_path)])
    assert sources[0] in message and "--seed 0" in message and "--seed 3" in message, message


@requires_data
@pytest.mark.parametrize("step", ["evaluate", "calibrate", "compare --candidates RUN"])
def test_real_bogus_steps_refuse_a_run_of_another_split(step, tmp_path):
    """``real-bogus train --new-split`` on a changed alert list (or GZ image list), then
    ``evaluate`` on the shipped data: the data passed the split check, being the shipped
    model's, but the run's training sky was drawn from other alerts, so its test and
    validation sims on this split overlap it. The run's ``calibration.json`` records the
    fingerprints its split was drawn from; a data folder giving others is refused in one
    line naming both (before the run's network is read: here it has none)."""
    from astromorph_training import realbogus

    run = _real_bogus_run(tmp_path / "run", 0)
    calib = realbogus.common.checkpoint_dir("real-bogus", root=run) / "calibration.json"
    calib.write_text(json.dumps({"seed": 0, "split_sources": ["a" * 64, "b" * 64]}))
    words = step.replace("RUN", str(run)).split()
    message = _one_line_exit(["real-bogus", *words, "--data-dir", str(DATA_DIR),
                              "--out-dir", str(run)])
    assert "aaaaaaaaaaaa" in message and "e3638012bcc7" in message, message


def _checkpoint_of_another_split(model, root):
    """A fabricated, untrained checkpoint of ``model`` that records a split drawn from
    other rows (fingerprint ``aaa...``) than the data's, where ``evaluate`` reads it."""
    import torch

    from astromorph_training import _common, embedding, gz2, morphology

    ckpt = _common.checkpoint_dir(model, root)
    ckpt.mkdir(parents=True, exist_ok=True)
    other = "a" * 64
    if model == "morphology":
        net = morphology.MorphologyNet(widths=morphology.DEFAULT_WIDTHS, stem=morphology.DEFAULT_STEM)
        state = {"ema": net.state_dict(), "widths": list(morphology.DEFAULT_WIDTHS),
                 "stem": morphology.DEFAULT_STEM, "split_source": other}
        path = ckpt / "last.pt"
    elif model == "morphology-gz2":
        net = gz2.GZ2Net(widths=gz2.WIDTHS, dropout=0.2, stem=morphology.STEM_1X)
        state = {"ema": net.state_dict(), "widths": list(gz2.WIDTHS), "stem": morphology.STEM_1X,
                 "dropout": 0.2, "history": [{"val_rmse": 0.1, "seconds": 1.0}],
                 "split_source": other}
        path = ckpt / "best.pt"
    else:
        torch.manual_seed(0)
        state = {"method": "simclr", "model": embedding.build_method("simclr").state_dict(),
                 "split_source": other}
        path = ckpt / "last.pt"
    _common.save_checkpoint(state, path, model=model)


@requires_data
@pytest.mark.parametrize("model, step", [("morphology", "evaluate"), ("morphology", "export"),
                                         ("morphology-gz2", "evaluate"),
                                         ("embedding", "evaluate"), ("embedding", "export")])
def test_checkpoints_of_another_split_are_refused(model, step, tmp_path, monkeypatch):
    """``morphology train --new-split`` on a changed ``labels.csv`` (``morphology-gz2``:
    ``votes.csv``), then ``evaluate`` on the shipped file: that file passed the split
    check, being the shipped models', but the split drawn from it is not the checkpoint's,
    so its validation and test galaxies held some the checkpoint was trained on. The
    checkpoint now records its split's fingerprint and other rows are refused in one line
    naming both, before any image is read (the preprocessing is made to fail here)."""
    from astromorph_training import embedding, gz2, morphology

    def no_images(*args, **kwargs):
        raise AssertionError("images read before the split was checked")

    monkeypatch.setattr(morphology, "_preprocess_files", no_images)
    monkeypatch.setattr(gz2, "_cached", no_images)
    monkeypatch.setattr(embedding, "_cached", no_images)
    _checkpoint_of_another_split(model, tmp_path)
    message = _one_line_exit([model, step, "--data-dir", str(DATA_DIR), "--out-dir", str(tmp_path)])
    assert "aaaaaaaaaaaa" in message and "fingerprint" in message, message


def test_morphology_does_not_resume_a_checkpoint_of_another_split(tmp_path, monkeypatch):
    """A ``last.pt`` trained on the split of one ``labels.csv``, resumed with ``--new-split``
    on another: it went on training on galaxies its first epochs held out, then recorded
    (and was scored on) the new split. Refused in one line naming both fingerprints."""
    import numpy as np

    from astromorph_training import morphology

    _checkpoint_of_another_split("morphology", tmp_path)
    last = morphology._common.checkpoint_dir("morphology", tmp_path) / "last.pt"
    state = morphology._common.load_checkpoint(last)
    state.update(epoch=0, history=[])
    morphology._common.save_checkpoint(state, last, model="morphology")
    labels = np.arange(10) % len(morphology.CLASS_NAMES)
    monkeypatch.setattr(morphology, "load_dataset", lambda args, **kw: {
        "labels": labels, "split": (np.arange(6), np.arange(6, 8), np.arange(8, 10)),
        "split_source": "b" * 64})
    message = _one_line_exit(["morphology", "train", "--data-dir", str(tmp_path),
                              "--out-dir", str(tmp_path)])
    assert "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message, message


def test_options_of_the_step_run_are_accepted():
    """The documented uses parse: ``build`` runs ``evaluate``, so it takes ``--test-seed``."""
    from astromorph_training.__main__ import _check_step_options, build_parser

    for argv in ("real-bogus build --test-seed 20261123", "real-bogus evaluate --test-seed 1",
                 "real-bogus compare --candidates a --val-seed 22",
                 "real-bogus average --sources a b --ensemble",
                 "real-bogus average --sources a b --bn-samples 10",
                 "radio-morphology average --sources a b", "radio-morphology build --throughput",
                 "morphology build --lr 0.1 --tta 4", "morphology export --tta 4",
                 "morphology-gz2 train --student-epochs 3 --init none",
                 "morphology-gz2 evaluate --tta 4", "morphology-gz2 evaluate --tag x",
                 "embedding train --compare --compare-epochs 2 --method byol",
                 "embedding evaluate --probe-draws 3 --cnn-draws 2 --tta 4",
                 "embedding build --probe-draws 3 --compare", "embedding export --tta 4",
                 "morphology build --epochs 2", "real-bogus train --epochs 2",
                 "embedding train --compare-only --compare-epochs 8 --methods simclr",
                 "embedding build --compare --compare-images 100",
                 "morphology-gz2 train --student-epochs 3 --pseudo-tta 2",
                 "morphology-gz2 train --student-epochs 3 --student-from-teacher "
                 "--student-lr 0.1",
                 "radio-morphology train --arch d4 --d4-widths 2 4 8 16 32 --mixup 0.2",
                 "radio-morphology build --stage4 128 --stage0 16 --peak-norm --lr 0.1",
                 "radio-morphology train --arch plain --stage4 0 --cv --folds 1",
                 "real-bogus train --lr 0.1 --cycles 2 --amp bf16 --processes 2 --restart",
                 "real-bogus build --batch-size 64 --test-seed 3",
                 "real-bogus average --sources a b --bn-samples 10 --threads 1"):
        words = argv.split()
        parser = build_parser(words[0])
        _check_step_options(parser, parser.parse_args(words))

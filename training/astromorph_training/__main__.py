"""Command line: ``python -m astromorph_training MODEL STEP [options]``.

``STEP`` is ``train``, ``evaluate``, ``export`` or ``build`` (the three in turn);
``real-bogus compare`` scores the shipped model and candidate runs for a pre-registered rule;
``real-bogus calibrate`` refits the calibration and threshold of a trained run;
``real-bogus average`` averages the final checkpoints of earlier runs (weights or logits);
``radio-morphology average`` combines runs of different seeds into one logit-averaging network.
"""
import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

from ._common import MODULES, positive_int, repo_root, resolve_data_dir, seed_int

STEPS = ("train", "evaluate", "export", "build", "compare", "calibrate", "average")
#: Steps only some models have.
OPTIONAL_STEPS = ("compare", "calibrate", "average")
#: Model -> the `OPTIONAL_STEPS` it has (named here, not found by ``hasattr``: morphology's
#: module has a ``calibrate`` helper that is no step).
EXTRA_STEPS = {
    "real-bogus": ("compare", "calibrate", "average"),
    "radio-morphology": ("average",),
}
#: Models whose held-out split is fixed by their data (firstgalaxydata's archives), so
#: that they have no ``--new-split``.
FIXED_SPLIT = ("radio-morphology",)
#: ``build`` runs these steps in order with the same options.
BUILD = ("train", "evaluate", "export")
#: Options of every model that only some steps read (as a module's ``STEP_OPTIONS``).
STEP_OPTIONS = {"epochs": ("train",)}


#: How to install what the training modules import (docs/training.md).
INSTALL = ("from the astromorph checkout, pip install 'torch==2.13.0' '.[cpu,all]' ./training "
           "(astromorph from the checkout, not the package index)")


def _load(model):
    try:
        return importlib.import_module(f"astromorph_training.{MODULES[model]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"astromorph_training.{MODULES[model]}":
            raise SystemExit(f"no training module for model {model!r} yet") from exc
        if exc.name is None or exc.name.startswith("astromorph_training"):
            raise
        raise SystemExit(f"{model}: cannot import {exc.name!r}: {INSTALL}") from None
    except ImportError as exc:  # e.g. an astromorph that is not this checkout's
        if exc.name is None or exc.name.startswith("astromorph_training"):
            raise
        raise SystemExit(f"{model}: {exc} ({exc.name!r} is not the version this checkout "
                         f"needs): {INSTALL}") from None


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is a --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def steps_of(model):
    """The steps ``model`` has: `BUILD`, ``build`` and its `EXTRA_STEPS`."""
    return tuple(s for s in STEPS if s not in OPTIONAL_STEPS or s in EXTRA_STEPS.get(model, ()))


def _epochs_default(module):
    """``--epochs``' default, as its help says it, for the model of ``module`` (None: no
    model named)."""
    if module is None:
        return "default: the model's, see python -m astromorph_training MODEL train --help"
    text = f"default {module.DEFAULT_EPOCHS}"
    if hasattr(module, "DEFAULT_CV_EPOCHS"):  # radio-morphology train --cv
        cv = module.DEFAULT_CV_EPOCHS
        text += f", {cv} with --cv" if cv != module.DEFAULT_EPOCHS else ", with --cv too"
    return text


def build_parser(model=None):
    """The command line parser, with the options (and steps) of ``model`` when given."""
    parser = _Parser(
        prog="python -m astromorph_training",
        description="Train, evaluate and export the models shipped in models/.",
    )
    module = None if model is None else _load(model)
    parser.add_argument("model", choices=sorted(MODULES))
    parser.add_argument("step", choices=STEPS if model is None else steps_of(model))
    parser.add_argument("--data-dir", default=None,
                        help="real data directory (default: $ASTROMORPH_DATA or ../shared/data)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="random seed, 0 to 2**32 - 1 (default 0)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"training epochs (train and build; {_epochs_default(module)})")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run on a handful of images (CI): writes below "
                             "$TMPDIR/astromorph-smoke/MODEL/ whatever --out-dir says, never "
                             "into models/")
    if model not in FIXED_SPLIT:
        parser.add_argument("--new-split", action="store_true",
                            help="draw the held-out split from a changed labels.csv / "
                                 "votes.csv (real-bogus: ztf_triplets.npz alerts or GZ image "
                                 "list) (refused by default: added, removed or reordered rows "
                                 "move galaxies or sky between training and held-out sets)")
    parser.add_argument("--out-dir", default=None,
                        help="repository root to write models/ and training/reports/ into "
                             "(default: the checkout this training/ belongs to; for an "
                             "installed copy, the nearest folder at or above the working "
                             "directory holding training/astromorph_training and models/, else "
                             "the working directory)")
    if module is not None:
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(parser)
    return parser


def _check_step_options(parser, args):
    """Refuse (exit status 2) an option given that none of the steps run reads, or without
    the option it works with.

    `STEP_OPTIONS` and a model module's ``STEP_OPTIONS`` map such options (their ``dest``)
    to the steps that read them; given to another step (``real-bogus train --test-seed 5``,
    ``morphology evaluate --epochs 5``) they were accepted and did nothing.

    A module's ``OPTION_NEEDS`` maps options to others of which one must be given too:
    without them they are not read (``embedding train --compare-epochs 2`` without
    ``--compare``). A need ``(dest, value)`` is met when that option has that value, given
    or by default (``radio-morphology --d4-widths`` needs ``--arch d4``, ``--stage4``
    ``--arch plain``). A module's ``OPTION_CONFLICTS`` maps options to others with which
    they are not read (``real-bogus --bn-samples`` with ``--ensemble``).
    """
    def given(dest):
        if isinstance(dest, tuple):
            return getattr(args, dest[0], None) == dest[1]
        return getattr(args, dest, None) != parser.get_default(dest)

    def flag(dest):
        if isinstance(dest, tuple):
            return f"{flag(dest[0])} {dest[1]}"
        return f"--{dest.replace('_', '-')}"

    run = BUILD if args.step == "build" else (args.step,)
    module = _load(args.model)
    options = {**STEP_OPTIONS, **getattr(module, "STEP_OPTIONS", {})}
    for dest, steps in options.items():
        if given(dest) and not set(steps) & set(run):
            parser.error(f"{flag(dest)} is an option of {args.model} "
                         f"{' / '.join(steps)}, not of {args.step}")
    for dest, needs in getattr(module, "OPTION_NEEDS", {}).items():
        if given(dest) and not any(map(given, needs)):
            parser.error(f"{flag(dest)} is read only with {' or '.join(map(flag, needs))}, "
                         "which is not given")
    for dest, others in getattr(module, "OPTION_CONFLICTS", {}).items():
        for other in others:
            if given(dest) and given(other):
                parser.error(f"{flag(dest)} is not read with {flag(other)}: give one of them")


def main(argv=None):
    """Run ``python -m astromorph_training MODEL STEP [options]``; returns the last step's result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # the model's own options need its module: the first argument naming a model (global
    # options such as --data-dir DIR may come before it)
    model = next((a for a in argv if a in MODULES), None)
    parser = build_parser(model)
    args = parser.parse_args(argv)
    _check_step_options(parser, args)
    args.data_dir = resolve_data_dir(args.data_dir)
    args.out_dir = repo_root() if args.out_dir is None else Path(args.out_dir)
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise SystemExit(f"--out-dir {str(args.out_dir)!r} is a file: pass the repository root "
                         "(a folder) to write models/ and training/reports/ into")
    module = _load(args.model)
    if args.step not in steps_of(args.model):
        raise SystemExit(f"no {args.step} step for model {args.model!r}")
    for step in (BUILD if args.step == "build" else (args.step,)):
        start = time.perf_counter()
        try:
            result = getattr(module, step)(args)
        except FileNotFoundError as exc:  # missing data or checkpoint files: one line
            hint = ("is --data-dir (or $ASTROMORPH_DATA) the data folder?" if step == "train" else
                    f"run `python -m astromorph_training {args.model} train` first, or check "
                    "--out-dir and --data-dir")
            raise SystemExit(f"{args.model} {step}: {exc.strerror or exc}: "
                             f"{exc.filename or ''} ({hint})") from None
        except KeyboardInterrupt:  # Ctrl-C: one line; checkpoints are written atomically
            print(f"{args.model} {step}: interrupted (rerun the same command: train resumes "
                  "from its last saved epoch, except under --smoke)", file=sys.stderr)
            raise SystemExit(130) from None
        logging.getLogger("astromorph_training").info(
            "%s %s finished in %.1f s", args.model, step, time.perf_counter() - start)
    return result


if __name__ == "__main__":
    main()

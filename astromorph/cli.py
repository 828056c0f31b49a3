"""The ``astromorph`` command line."""
if __name__ == "__main__":
    # ``python -m astromorph.cli``: run as the console script and ``python -m astromorph``
    # run, by `astromorph._console.main`, before the imports below (astropy, by way of
    # .exceptions), so that Ctrl-C while they load is one line and exit status 130, not a
    # traceback. That imports this file again, as the module astromorph.cli, to run.
    import sys

    from astromorph._console import main

    sys.exit(main())

import argparse
import functools
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from ._version import __version__
from .exceptions import AstromorphError

__all__ = ["main"]

log = logging.getLogger(__name__)


def _describe_input(card):
    spec = card["input"]
    text = "x".join(str(s) for s in spec["shape"])
    size = spec.get("angular_size") or {}
    if "pixel_scale_arcsec" in size:
        text += f" @ {size['pixel_scale_arcsec']}\"/px"
    elif size.get("kind"):
        text += f" ({size['kind']}-scaled)"
    return text


def _cmd_models(args):
    from ._registry import incomplete_models, list_models, models_dir, resolve_model
    from ._session import available_providers

    names = list_models()
    rows, bad = [], 0
    for name, problem in incomplete_models().items():  # a broken install never passes
        rows.append([name, "?", "?", "?", "?", problem])
        bad += 1
    for name in names:
        try:
            path, card = resolve_model(name)
            variants = list(card.get("variants") or {})
            row = [name, str(card["version"]), str(card["task"]), _describe_input(card),
                   ", ".join([card.get("precision", "float32"), *variants])]
        except AstromorphError as exc:
            rows.append([name, "?", "?", "?", "?", f"BAD CARD: {exc}"])
            bad += 1
            continue
        if args.verify:
            problems = _verify_model(name, variants)
            row.append("; ".join(problems) or "sha256 OK")
            bad += bool(problems)
        rows.append(row)
    last = "checksum" if args.verify else "problem" if bad else None  # a bad card's reason
    header = ["name", "version", "task", "input", "precision"] + ([last] if last else [])
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    try:
        providers = ", ".join(available_providers())
    except AstromorphError as exc:
        providers = f"none ({exc})"
    print(f"\n{len(names)} model(s); execution providers available: {providers}")
    print(f"default providers: {_default_providers()}")
    if not names:  # an empty $ASTROMORPH_MODELS_DIR, or a wheel built without its models
        print(f"no model found in {models_dir()}"
              + (": verification FAILED" if args.verify else ""))
    if args.verify:
        if not names:
            return 1
        print("every checksum matches" if not bad else f"{bad} model(s) FAILED verification")
    return 1 if bad else 0


def _verify_model(name, variants):
    """What is wrong with every file the card of model ``name`` lists (the main one, its
    ``variants``, its single-band graph), each loaded on the CPU as `load_model` loads it:
    checksum, ONNX graph and card checked. An empty list when nothing is."""
    from ._model import Model
    from ._registry import resolve_model, resolve_single_band_graph, verify_checksum
    from .exceptions import ChecksumMismatchError, MissingRuntimeError

    problems = []
    for precision in [None, *variants]:
        what = f"VARIANT {precision}" if precision else "MODEL"
        try:
            try:
                model = Model(name, precision=precision, providers="cpu")
            except MissingRuntimeError:  # without ONNX Runtime: the checksums only
                path, card = resolve_model(name, precision=precision)
                verify_checksum(path, card)
                model = None
            if precision is None:
                what = "SINGLE-BAND GRAPH"
                if model is not None:
                    model._single_band_session()
                elif (grey := resolve_single_band_graph(path, card)) is not None:
                    verify_checksum(*grey)
        except ChecksumMismatchError as exc:
            problems.append(f"SHA256 MISMATCH {Path(exc.path).name} (file "
                            f"{exc.actual[:12]}..., card {exc.expected[:12]}...)")
        except AstromorphError as exc:
            problems.append(f"BAD {what}: {exc}")
    return problems


def _default_providers():
    """What a model loaded without ``providers=`` would run on, and why (``"auto"`` or
    ``$ASTROMORPH_PROVIDERS``), in words."""
    from ._session import PROVIDERS_ENV, resolve_providers

    setting = os.environ.get(PROVIDERS_ENV)
    source = f"${PROVIDERS_ENV}={setting}" if setting else "auto"
    try:
        requested, usable = resolve_providers(None)
    except AstromorphError as exc:
        return f"none: {exc}"
    missing = [p for p in requested if p not in usable]
    return (f"{', '.join(usable)} ({source}"
            + (f"; {', '.join(missing)} not available in this ONNX Runtime build" if missing
               else "") + ")")


def build_parser():
    """The argument parser of the ``astromorph`` command."""
    parser = argparse.ArgumentParser(
        prog="astromorph",
        description="Apply packaged ONNX models to astronomical images, stamps and tables.")
    parser.add_argument("--version", action="version", version=f"astromorph {__version__}")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the shipped models",
                       description="List the shipped models; --verify checks every model file.")
    p.add_argument("--verify", action="store_true",
                   help="load each model file (variants and single-band graphs included) on the "
                        "CPU, checking its sha256 and that its card describes its graph; one "
                        "line per model, exit 1 if any is broken")
    p.set_defaults(func=_cmd_models)

    for register in _extra_commands():
        register(sub)
    for command in sub.choices.values():
        _add_verbosity(command, dest="_sub")  # also after the command: `astromorph predict ... -q`
        command.set_defaults(_command_parser=command)  # whose usage an unknown option gets
        for action in command._actions:
            if action.dest in _PATH_ARGUMENTS:
                action.type = _path
    return parser


#: The arguments of the sub-commands that name files or folders.
_PATH_ARGUMENTS = {"inputs", "catalog", "table", "image", "output", "write_header", "gallery",
                   "map", "plot"}


def _path(text):
    """A file or folder argument: an empty one (an unset shell variable, ``-o "$OUT"``) is a
    usage error, not the working directory or no output at all."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return text


def _add_verbosity(parser, dest=""):
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="verbose" + dest,
                        help="more log output (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", dest="quiet" + dest,
                        help="errors only: no warnings, progress bar or summary lines")


def add_model_option(parser, help, *, required=False, default=None, positional=False):
    """``-m/--model``: the option naming the model, spelled the same in every command that
    takes one.

    With ``positional`` (``astromorph predict``), the model may instead be the first
    positional argument (``predict MODEL INPUT...``): the command's positional arguments are
    gathered, after parsing, into ``args.inputs`` by `_model_and_inputs`, and ``args.model``
    is the model however given. The command adds its ``inputs`` argument after this one.
    """
    parser.add_argument("-m", "--model", required=required, default=default, help=help)
    if positional:
        parser.add_argument("model_word", metavar="MODEL", nargs="?",
                            help="the model, unless given with -m/--model")
        parser.set_defaults(_gather_positionals=functools.partial(_model_and_inputs, parser))
        parser.formatter_class = _ModelOrOptionUsage


class _ModelOrOptionUsage(argparse.HelpFormatter):
    """The usage line of a command with `add_model_option` (``positional``):
    ``... (MODEL | -m MODEL) INPUT [INPUT ...]``, as the command is called, rather than
    argparse's ``[-m MODEL] ... [MODEL] [INPUT ...]`` (both positional arguments are
    optional to argparse, `_model_and_inputs` requires them). Parsing is unchanged."""

    def _format_usage(self, usage, actions, groups, prefix):
        actions = [a for a in actions if a.dest != "model"]  # shown with MODEL
        return super()._format_usage(usage, actions, groups, prefix)

    def _format_args(self, action, default_metavar):
        if action.dest == "model_word":
            return "(MODEL | -m MODEL)"
        if action.dest == "inputs":
            return "INPUT [INPUT ...]"
        return super()._format_args(action, default_metavar)


def _names_a_model(word):
    """Whether the positional argument ``word`` names a model rather than an input: a shipped
    model's name that is no file or folder here, an ``.onnx`` file or a model folder."""
    from ._registry import list_models

    # (os.path's checks: False for a name too long or under a folder that cannot be
    # searched, where pathlib's raise OSError)
    return (word.lower().endswith(".onnx") or os.path.isfile(os.path.join(word, "model.onnx"))
            or (word in list_models() and not os.path.exists(word)))


def _model_and_inputs(parser, args, extras):
    """Sort the positional arguments of a command with `add_model_option` (``positional``)
    into ``args.model`` and ``args.inputs``, in the order they were given; ``extras`` (what
    argparse could not place: inputs after an option, ``predict M a.fits -o OUT b.fits``)
    are inputs too, unless they are options; after a ``--`` among them (``predict M a.fits
    -o OUT -- -b.fits``), all are inputs. Usage errors (exit status 2) for a model given
    both ways that differs, and for no model or no input."""
    cut = extras.index("--") if "--" in extras else len(extras)
    unknown = [e for e in extras[:cut] if e.startswith("-") and e != "-"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    extras = extras[:cut] + extras[cut + 1:]
    words = [w for w in [args.model_word, *args.inputs, *extras] if w is not None]
    del args.model_word
    if "" in words:  # an unset shell variable
        parser.error("argument INPUT: empty path")
    if args.model is None:
        if len(words) < 2:
            parser.error("the following arguments are required: MODEL (or -m/--model) and "
                         "INPUT")
        args.model, words = words[0], words[1:]
    elif words and _names_a_model(words[0]):
        if words[0] != args.model:
            parser.error(f"the model is given twice and differs: MODEL {words[0]!r} and "
                         f"-m/--model {args.model!r}; give one")
        words = words[1:]
    if not words:
        parser.error("the following arguments are required: INPUT")
    args.inputs = words


def add_runtime_options(parser, *, threads_help=None):
    """``--providers``, ``--threads`` and ``--precision``: how a command runs its model, with
    the same names, defaults and help in every command that loads one."""
    parser.add_argument("--providers", default=None,
                        help="execution providers: auto (default), cpu, cuda (or gpu), tensorrt")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=threads_help or "CPU threads of ONNX Runtime (default: "
                        "$ASTROMORPH_NUM_THREADS, else ONNX Runtime's choice; 0: ONNX "
                        "Runtime's choice)")
    parser.add_argument("--precision", choices=["float32", "int8"], default=None,
                        help="model variant: int8 is a quantised copy, faster on CPUs, where "
                             "the card lists one (default: float32)")


def check_model_output(model, output):
    """Check, before any work, that a table with the columns of ``model`` (a name or path)
    can be written to ``output`` (CSV cannot hold an embedding)."""
    from ._adapters import multidimensional_outputs
    from ._io import check_multidimensional
    from ._registry import resolve_model

    if output:
        check_multidimensional(output, multidimensional_outputs(resolve_model(model)[1]))


def check_range(option, value, *, low=None, high=None, low_open=False):
    """Raise `InvalidArgumentError` naming the command-line ``option`` unless its number
    ``value`` (``None``: not given) is ``>= low`` (``> low`` with ``low_open``) and
    ``<= high``: checked before any work, so that the error names the option and the value
    as typed, not the Python parameter it is passed on as. ``inf`` and ``nan`` (which
    ``float()`` reads) are refused whatever the bounds."""
    import math

    from .exceptions import InvalidArgumentError

    if value is None or (math.isfinite(value)
                         and (low is None or (value > low if low_open else value >= low))
                         and (high is None or value <= high)):
        return
    if high is None:
        need = f"{'>' if low_open else '>='} {low}"
    else:
        need = f"<= {high}" if low is None else f"in {'(' if low_open else '['}{low}, {high}]"
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{option} must be a finite number {need}, got {value}")
    typed = int(value) if float(value).is_integer() else value
    raise InvalidArgumentError(f"{option} must be {need}, got {typed}")


#: Per command, the parameters of the Python functions it passes options on to whose errors
#: name them (``write_header='x' is not a directory``), and the options that give them: the
#: one-line error of the command names the option instead (`_as_typed`).
_OPTION_OF = {
    "predict": {"write_header": "--write-header", "providers": "--providers"},
    "annotate": {"providers": "--providers", "columns": "--stamp-col",
                 "pixel_scale": "--pixel-scale", "negative": "--negative-col",
                 "centre": "--centre-col"},
    "demo": {"providers": "--providers"},
    "similar": {"providers": "--providers", "source_column": "--source-column"},
    "cluster": {"method": "--map-method", "prefix": "--prefix"},
    "classify": {"prefix": "--prefix"},
    "evaluate": {"labels": "--map", "threshold": "--threshold", "target_fnr": "--target-fnr",
                 "suffix": "--suffix"},
}


def _as_typed(message, args, parser):
    """``message``, the error of a function that the command of ``args`` (parsed by its
    ``parser``) passed its options on to, naming the options the user typed rather than the
    parameters they were passed on as: ``write_header='x' is not a directory`` becomes
    ``--write-header 'x' is not a directory``. A parameter of `_OPTION_OF` is renamed where
    it opens the message or is followed by ``=``; not where its option was not given (its
    value came from elsewhere, e.g. ``$ASTROMORPH_PROVIDERS``), nor where the message names
    the option already."""
    for parameter, option in _OPTION_OF.get(getattr(args, "command", None), {}).items():
        action = parser._option_string_actions.get(option)
        if (action is None or getattr(args, action.dest, None) is None
                or re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", message)):
            continue
        message = re.sub(rf"(?<![\w.$-]){parameter}=(?=\s|$)", option, message)
        message = re.sub(rf"(?<![\w.$-]){parameter}=", option + " ", message)
        message = re.sub(rf"^{parameter}\b", option, message)
    return message


def report(args, message):
    """Print a status line of a command (what was written, a summary) on stderr, unless
    ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _extra_commands():
    """Functions ``register(subparsers)`` adding the other sub-commands."""
    from . import _cli_annotate, _demo, _evaluate, _predict
    from .embeddings import _cli as _embeddings_cli

    return [_cli_annotate.register, _predict.register, _demo.register, _embeddings_cli.register,
            _evaluate.register]


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: like Ctrl-C, it unwinds the run, so that the
    temporary file of an output being written is removed (the default action of SIGTERM ends
    the process at once and leaves it behind)."""


def _on_sigterm(signum, frame):
    raise _Terminated


class _Stdout:
    """``sys.stdout`` while a command runs: a write or flush that fails (a full disk under
    ``> file``, a device error) raises `OutputError` naming standard output, reported as one
    error line; a closed pipe stays a `BrokenPipeError` (exit status 141)."""

    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            from ._io import output_error

            _silence_stdout()  # what is left in the buffer is not written again at exit
            raise output_error(f"cannot write to standard output: {exc.strerror or exc}",
                               exc) from exc

    def write(self, text):
        return self._guarded(self._stream.write, text)

    def writelines(self, lines):
        return self._guarded(self._stream.writelines, lines)

    def flush(self):
        return self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence_stdout():
    """Send what is left to write on stdout (Python flushes it at exit) to the null device,
    so that a closed pipe gives no second error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (e.g. captured by a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _note(exc):
    """``"; <what was done>"`` for an interruption that says what was already written (the
    header results of ``predict --in-place``), else ``""``."""
    note = getattr(exc, "astromorph_note", None)
    return f"; {note}" if note else ""


def _parse(parser, argv):
    """``argv`` parsed by ``parser`` (`build_parser`) as `main` parses it, running nothing:
    the namespace (the positional arguments of ``predict`` sorted into model and inputs) and
    the parser of the command it names. Usage errors exit (`SystemExit`, status 2) with the
    command's own usage."""
    args, extras = parser.parse_known_args(argv)
    gather = vars(args).pop("_gather_positionals", None)
    command = vars(args).pop("_command_parser", parser)
    if gather is not None:  # the positional arguments of `predict`: MODEL (or -m) INPUT...
        gather(args, extras)
    elif extras:  # argparse would answer with the top-level usage, which does not show how
        # the command takes its arguments: the command's own usage instead
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    return args, command


def main(argv=None):
    """Run the command line; returns the exit status (143 after SIGTERM, 130 after Ctrl-C,
    141 when the reader of its output goes away).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``astromorph``; default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when ``astromorph models --verify`` finds a bad
        file, 2 after an astromorph error (printed to standard error). Usage errors exit
        (`SystemExit`) with status 2, as argparse does.
    """
    if sys.stderr is None:  # started with fd 2 closed (`2>&-`): print(file=None) would
        # write the status and error lines on stdout, into the table printed there
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        parser = build_parser()
        args, command = _parse(parser, argv)
    except KeyboardInterrupt:  # while the commands' modules are imported
        print("astromorph: interrupted", file=sys.stderr)
        return 130
    verbose = args.verbose + getattr(args, "verbose_sub", 0)
    quiet = args.quiet = args.quiet or getattr(args, "quiet_sub", False)
    if verbose and quiet:
        parser.error("-q/--quiet and -v/--verbose exclude each other")
    level = logging.ERROR if quiet else [logging.WARNING, logging.INFO,
                                         logging.DEBUG][min(verbose, 2)]
    # a handler for the records of every library at WARNING (ERROR with -q); -v/-vv are
    # astromorph's own (with the root at DEBUG, -vv printed the debug lines of any library
    # imported). basicConfig does nothing where the root has handlers (a second call, a
    # program that set up its logging): astromorph's level is set on every call
    logging.basicConfig(level=max(level, logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    # astropy's logger prints the warnings it captures (every AstromorphWarning is an
    # AstropyUserWarning) with its own handler; passed on to the root handler set up above
    # as well, each would be printed twice
    own_log = logging.getLogger("astromorph")
    own_level = own_log.level
    own_log.setLevel(level)
    astropy_log = logging.getLogger("astropy")
    propagate, astropy_log.propagate = astropy_log.propagate, False
    astropy_level = astropy_log.level
    if quiet:
        astropy_log.setLevel(logging.ERROR)
    # only where SIGTERM would end the process at once: an ignored SIGTERM (e.g. set by a
    # supervisor) or a handler of the program that calls main() is left as it is
    sigterm = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _Stdout(stdout)
    try:
        status = args.func(args)
        if stdout is not None:  # what is still buffered: its failure is reported here,
            sys.stdout.flush()  # not by Python at exit (status 120)
        return status
    except AstromorphError as exc:
        print(f"astromorph: error: {_as_typed(str(exc), args, command)}", file=sys.stderr)
        return 2
    except _Terminated as exc:  # outputs are atomic: nothing half-written is left
        print(f"astromorph: terminated (SIGTERM){_note(exc)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as exc:
        print(f"astromorph: interrupted{_note(exc)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `astromorph ... | head`: the reader of the output went away
        _silence_stdout()
        return 141  # as a process ended by SIGPIPE
    finally:
        if isinstance(sys.stdout, _Stdout):
            sys.stdout = stdout
        own_log.setLevel(own_level)
        astropy_log.propagate = propagate
        astropy_log.setLevel(astropy_level)
        if sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

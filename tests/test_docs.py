"""The README and docs/ name only things that exist: public names, CLI options and call
signatures of their Python examples (checked statically); and every Python example runs, on
the packaged files, the real data (where present) or stand-ins of the reader's files."""
import argparse
import ast
import builtins
import importlib
import inspect
import re

import pytest

import doc_stand_ins
from conftest import DATA_DIR, REPO
from astromorph.cli import build_parser, main
from astromorph.exceptions import MissingDependencyError

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Pages about other tools' options (``python -m astromorph_training``).
TRAINING_PAGES = ("training.md", "models.md")


def _resolve(dotted):
    """The object ``astromorph.a.b`` names (importing submodules), or None."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return None
    return obj


def test_every_astromorph_name_in_the_docs_exists():
    missing = [f"{page.name}: {name}" for page in PAGES
               for name in sorted(set(re.findall(r"\bastromorph(?:\.[A-Za-z_]\w*)+",
                                                 page.read_text())))
               if _resolve(name) is None]
    assert not missing, missing


# ------------------------------------------------------------------------------ command line
def _options(parser):
    return {s for a in parser._actions for s in a.option_strings}


def _commands():
    """Options of the top-level parser, and sub-command name -> its options."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return _options(parser), {name: _options(p) for name, p in sub.choices.items()}


def _shell_snippets(page):
    """(line number, text) of every shell code line (continuations joined) and inline span."""
    text = page.read_text()
    for m in re.finditer(r"^```(?:bash|console|sh)\n(.*?)^```", text, re.S | re.M):
        first = text[:m.start()].count("\n") + 2
        joined, start = "", None
        for n, line in enumerate(m.group(1).splitlines(), first):
            start = n if start is None else start
            joined += " " + line.split(" #")[0].rstrip()
            if not joined.endswith("\\"):
                yield start, joined.strip()
                joined, start = "", None
            else:
                joined = joined[:-1]
    for n, line in enumerate(text.splitlines(), 1):
        for span in re.findall(r"`([^`\n]+)`", line):
            yield n, span


def _option_tokens(text):
    return re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in TRAINING_PAGES],
                         ids=lambda p: p.name)
def test_cli_options_in_the_docs_exist(page):
    """``astromorph SUB ... --opt`` names a sub-command and its options; an inline
    ``--opt ...`` is an option of some sub-command."""
    top, commands = _commands()
    every = top.union(*commands.values())
    problems = []
    for n, snippet in ((n, part) for n, line in _shell_snippets(page)
                       for part in re.split(r"&&|;", line)):
        m = re.search(r"(?:^|[\s/$])astromorph\s+(-[\w-]+|[a-z][\w-]*(?:[/|][a-z][\w-]*)*)(.*)",
                      snippet)
        if m and m.group(1).startswith("-"):  # astromorph --version
            problems += [f"line {n}: `astromorph` has no {opt}: {snippet}"
                         for opt in _option_tokens(m.group(0)) if opt not in top]
        elif m:
            for name in re.split(r"[/|]", m.group(1)):
                if name not in commands:
                    problems.append(f"line {n}: no sub-command {name!r}: {snippet}")
                    continue
                problems += [f"line {n}: `astromorph {name}` has no {opt}: {snippet}"
                             for opt in _option_tokens(m.group(2))
                             if opt not in commands[name] | top]
        elif snippet.strip().startswith("-"):
            problems += [f"line {n}: no command has {opt}: {snippet}"
                         for opt in _option_tokens(snippet) if opt not in every]
    assert not problems, problems


def _documented_command_lines(page):
    """(line number, argv after ``astromorph``) of every ``astromorph ...`` command in the
    shell code blocks of ``page``, its usage notation made one concrete line: ``[...]`` is
    optional text that is kept, ``A | B`` inside brackets or ``{a,b}`` take the first
    alternative, ``...`` (more of the same) and ``[options]`` are dropped, a count ``N`` is
    1; a line that pipes into another program (``| head``) is cut there."""
    text = page.read_text()
    for m in re.finditer(r"^```(?:bash|console|sh)\n(.*?)^```", text, re.S | re.M):
        code = m.group(1)
        first = text[:m.start()].count("\n") + 2
        lines = [(first + code[:c.start()].count("\n"), c.group(0))
                 for c in re.finditer(r"(?:[^\n]*\\\n)*[^\n]*", code) if c.group(0)]
        for n, line in lines:
            line = re.sub(r"\\\n", " ", line).split(" #")[0]
            for part in re.split(r"&&|;", line):
                cmd = re.search(r"(?:^|[\s/$])astromorph((?:\s+\S.*)?)$", part.strip())
                if not cmd or part.strip().startswith(("pip", "python3 -m venv")):
                    continue
                rest = cmd.group(1)
                rest = re.sub(r"\[options\]", " ", rest)
                rest = re.sub(r"\[([^\[\]|]*)\|[^\[\]]*\]", r"\1", rest)  # [A | B] -> A
                rest = rest.replace("[", " ").replace("]", " ")
                rest = re.sub(r"\{([^{},]*),[^{}]*\}", r"\1", rest)       # OUT.{a,b} -> OUT.a
                rest = re.split(r"\s\|\s", rest)[0]                        # ... | head
                words = [{"N": "1"}.get(w, w.strip("'\"")) for w in rest.split() if w != "..."]
                if words:
                    yield n, [w.removesuffix("...") for w in words]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_command_lines_parse(page, capsys):
    """Every ``astromorph ...`` line of a shell block parses with the real command line (as
    `main` parses it; nothing is run): a renamed option, a dropped argument or a wrong number
    of values shows here, where `test_cli_options_in_the_docs_exist` checks names only."""
    from astromorph.cli import _parse

    failures = []
    for n, argv in _documented_command_lines(page):
        try:
            _parse(build_parser(), argv)
        except SystemExit as exc:
            if exc.code:  # --version and --help exit 0
                failures.append(f"line {n}: astromorph {' '.join(argv)}: "
                                f"{capsys.readouterr().err.strip().splitlines()[-1]}")
        capsys.readouterr()
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------- Python examples
def _python_examples():
    for page in PAGES:
        if page.name == "api.md":  # signatures, not calls; generated from the package
            continue
        text = page.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            yield pytest.param(m.group(1), id=f"{page.name}:{text[:m.start()].count(chr(10)) + 1}")


def _returned_class(func):
    """The astromorph class a function or method returns, from its numpydoc Returns."""
    import astromorph

    m = re.search(r"\nReturns\n-+\n(?:\w+ : )?([\w.]+)", inspect.getdoc(func) or "")
    obj = getattr(astromorph, m.group(1).rsplit(".", 1)[-1], None) if m else None
    return obj if inspect.isclass(obj) else None


class _Checker(ast.NodeVisitor):
    """Checks the calls of astromorph functions, classes and methods in one example."""

    def __init__(self):
        self.names = {}  # local name -> ("object", obj) or ("instance", class)
        self.problems = []

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] == "astromorph":
                local = alias.asname or alias.name.split(".")[0]
                target = alias.name if alias.asname else local
                self.names[local] = ("object", _resolve(target))

    def visit_ImportFrom(self, node):
        if (node.module or "").split(".")[0] != "astromorph":
            return
        for alias in node.names:
            obj = _resolve(f"{node.module}.{alias.name}")
            if obj is None:
                self.problems.append(f"from {node.module} import {alias.name}: no such name")
            self.names[alias.asname or alias.name] = ("object", obj)

    def visit_Assign(self, node):
        self.generic_visit(node)
        kind = self._value(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if kind and kind[0] == "instance":
                    self.names[target.id] = kind
                else:
                    self.names.pop(target.id, None)

    def visit_Call(self, node):
        self.generic_visit(node)
        self._value(node)

    def _value(self, node):
        """("object", obj) or ("instance", class) for what ``node`` evaluates to, or None."""
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._value(node.value)
            if base is None or base[1] is None:
                return None
            kind, obj = base
            if kind == "object" and (inspect.ismodule(obj) or inspect.isclass(obj)):
                name = f"{obj.__module__ + '.' if inspect.isclass(obj) else ''}{obj.__name__}"
                attr = _resolve(f"{name}.{node.attr}")
                if attr is None:
                    self.problems.append(f"{name} has no {node.attr!r}")
                return ("object", attr)
            if kind == "instance":
                try:
                    attr = inspect.getattr_static(obj, node.attr)
                except AttributeError:  # perhaps an instance attribute
                    return None
                if inspect.isfunction(attr):
                    return ("method", (obj, attr))
            return None
        if isinstance(node, ast.Call):
            return self._call(node)
        return None

    def _call(self, node):
        func = self._value(node.func)
        if func is None or func[1] is None:
            return None
        kind, obj = func
        if kind == "method":
            cls, function = obj
            self._check(node, function, f"{cls.__name__}.{function.__name__}", extra=1)
            returned = _returned_class(function)
            return ("instance", returned) if returned else None
        if not callable(obj):
            return None
        self._check(node, obj, getattr(obj, "__qualname__", repr(obj)))
        if inspect.isclass(obj):
            return ("instance", obj)
        returned = _returned_class(obj)
        return ("instance", returned) if returned else None

    def _check(self, node, func, name, extra=0):
        if any(isinstance(a, ast.Starred) for a in node.args) or \
                any(k.arg is None for k in node.keywords):
            return
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*[None] * (len(node.args) + extra),
                           **{k.arg: None for k in node.keywords})
        except TypeError as exc:
            self.problems.append(f"{name}{ast.unparse(node)[len(ast.unparse(node.func)):]}: "
                                 f"{exc}")


@pytest.mark.parametrize("code", list(_python_examples()))
def test_python_examples_call_real_signatures(code):
    checker = _Checker()
    checker.visit(ast.parse(code))
    problems = list(dict.fromkeys(checker.problems))  # a chained call is seen more than once
    assert not problems, problems


# ------------------------------------------------------------------ running the examples
#: A string literal that names a file or folder (``"g.fits"``, ``"alerts/*.avro"``).
_PATH = re.compile(r"^[\w.*?\[\]-]*(/[\w.*?\[\]-]*)*(\.(ecsv|fits|fit|fz|gz|csv|parquet|avro|"
                   r"avsc|jpe?g|png|json|onnx)|/)$")
#: Calls whose string arguments name a file the example writes, not one it reads.
_WRITERS = {"plot", "save", "gallery", "plot_map", "write", "savefig"}


def _free_names(tree):
    """Names an example reads without defining them (imports, assignments, loops, with)."""
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)} - bound


def _paths(tree):
    """The files an example reads: string literals that look like paths, less those it only
    writes (``ev.plot("roc.png")``)."""
    written = {arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", getattr(node.func, "id", None)) in _WRITERS
               for arg in node.args if isinstance(arg, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and _PATH.match(node.value) and node.value not in written]


def _with_the_examples_above(code, page_examples):
    """``code`` preceded by the examples above it on its page that it continues: an example
    that uses a name it does not define (``table``, ``index``) goes on from the ones before."""
    above = page_examples[:page_examples.index(code)]
    free = _free_names(ast.parse(code)) - set(doc_stand_ins.OBJECTS)
    return "\n".join([*above, code]) if free and above else code


def _prepare_folder(code, folder, roots):
    """Prepare ``folder`` to run ``code`` in: the stand-ins of the reader's files it names
    (`doc_stand_ins.FILES`) written there, links to the files it names from ``roots``; return
    the namespace to run it in, its names defined by the stand-ins of `doc_stand_ins.OBJECTS`.
    Skip, saying what is missing, where some file or name has none."""
    tree = ast.parse(code)
    missing = sorted(_free_names(tree) - set(doc_stand_ins.OBJECTS))
    if missing:
        pytest.skip(f"uses {', '.join(missing)}, defined by no example above it on its page "
                    f"and with no stand-in in tests/doc_stand_ins.py OBJECTS")
    unknown = []
    for path in dict.fromkeys(_paths(tree)):
        found = [f for root in roots for f in ([root / path] if (root / path).exists()
                                               else root.glob(path))]
        if path in doc_stand_ins.FILES:
            doc_stand_ins.FILES[path](folder / path)
        elif found:
            for f in found:
                link = folder / f.relative_to(next(r for r in roots if r in f.parents))
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f)
        else:
            unknown.append(path)
    if unknown:
        pytest.skip(f"reads {', '.join(unknown)}: in neither the repository nor {DATA_DIR} (the "
                    f"real data) and with no stand-in in tests/doc_stand_ins.py FILES")
    return {"__name__": "__example__", **{name: make() for name, make in
                                        doc_stand_ins.OBJECTS.items() if name in _free_names(tree)}}


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """A folder holding what ``astromorph demo`` writes, for the examples that read it."""
    folder = tmp_path_factory.mktemp("demo")
    assert main(["-q", "demo", "-o", str(folder / "astromorph_demo.ecsv")]) == 0
    return folder


def _page_of(param_id):
    return param_id.rsplit(":", 1)[0]


_EXAMPLES = list(_python_examples())


@pytest.mark.parametrize("code", _EXAMPLES)
def test_python_examples_run(code, monkeypatch, request, tmp_path):
    """Every example runs as printed, in a temporary folder holding links to the packaged
    files, the real data (where present) or the demo's output it reads, and stand-ins of the
    reader's files and names (``galaxies.ecsv``, ``candidates``: `doc_stand_ins`), after the
    examples above it on its page where it goes on from them (``index.query(...)``)."""
    page = _page_of(request.node.callspec.id)
    code = _with_the_examples_above(
        code, [p.values[0] for p in _EXAMPLES if _page_of(p.id) == page])
    roots = [REPO, DATA_DIR]
    if "astromorph_demo.ecsv" in code:
        roots.append(request.getfixturevalue("demo_output"))
    names = _prepare_folder(code, tmp_path, roots)
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(code, "<example>", "exec"), names)
    except MissingDependencyError as exc:  # an optional dependency astromorph imports
        pytest.skip(str(exc))
    except ImportError as exc:  # one the example imports itself (fastavro, ...)
        if exc.name and exc.name.split(".")[0] != "astromorph":
            pytest.skip(f"needs {exc.name}")
        raise

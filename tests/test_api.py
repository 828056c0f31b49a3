"""The public API's signatures and numpydoc docstrings agree.

For every function, class and public method reachable from the ``__all__`` of the public
modules: the Parameters section names the signature's parameters, in order; a function
that returns something has Returns (or Yields); options are keyword-only; a Raises
section names astromorph's exceptions, including those the function raises itself.
(``numpydoc.validate`` is not a dependency: the sections are parsed here.)
"""
import ast
import enum
import importlib
import inspect
import re
import textwrap

import pytest

import astromorph.exceptions

#: The public modules: those of docs/make_api_page.py, and the command line's.
MODULES = ("astromorph", "astromorph.preprocessing", "astromorph.embeddings",
           "astromorph.exceptions", "astromorph.cli")

#: Options that may be given by position: (callable, parameter) -> why.
POSITIONAL_OPTIONS = {
    # the second data argument (FITS images), absent for tables of stamps
    ("astromorph.annotate_dask", "images"): "data",
    ("astromorph.SimilarityIndex.query", "row"): "data (one of row/position/image/vector)",
    ("astromorph.cli.main", "argv"): "data (the command line)",
    ("astromorph.GaussianMixture", "n_components"): "as scikit-learn's GaussianMixture",
    ("astromorph.LabelEvaluation.plot", "path"): "the output (none: the Figure only)",
}

_SECTION = re.compile(r"^([A-Z]\w*(?: \w+)*)\n-{3,}$", re.M)


def _sections(doc):
    """{section title: its text} of a numpydoc docstring."""
    doc = inspect.cleandoc(doc or "")
    found = list(_SECTION.finditer(doc))
    return {m.group(1): doc[m.end():found[i + 1].start() if i + 1 < len(found) else None]
            for i, m in enumerate(found)}


def _documented(section):
    """Parameter names of a Parameters section (``a, b : int`` names two; ``**kwargs``)."""
    names = []
    for line in section.splitlines():
        if line.strip() and not line[0].isspace():
            names += [n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")]
    return [n for n in names if n]


def _public_callables():
    """(dotted name, function whose signature it has, docstring) of every public function,
    class (its ``__init__``, documented in the class docstring) and public method."""
    seen = set()
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or inspect.ismodule(obj) or not callable(obj):
                continue
            seen.add(id(obj))
            if not inspect.isclass(obj):
                yield f"{modname}.{name}", obj, obj.__doc__
                continue
            if issubclass(obj, (BaseException, enum.Enum)):
                continue
            own = [k for k in obj.__mro__ if k.__module__.split(".")[0] == "astromorph"]
            if any("__init__" in vars(k) for k in own):
                yield f"{modname}.{name}", obj.__init__, obj.__doc__
            for klass in own:
                for attr, value in vars(klass).items():
                    func = value.__func__ if isinstance(value, (classmethod, staticmethod)) \
                        else value
                    if not attr.startswith("_") and inspect.isfunction(func):
                        yield f"{modname}.{name}.{attr}", func, func.__doc__


CALLABLES = list(_public_callables())
IDS = [c[0] for c in CALLABLES]


def _parameters(func):
    return [p for p in inspect.signature(func).parameters.values()
            if p.name not in ("self", "cls")]


def _tree(func):
    return ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]


def _own_nodes(node):
    """The nodes of a function's body, not those of functions or classes defined in it."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                  ast.ClassDef)):
            yield child
            yield from _own_nodes(child)


def test_the_public_api_is_found():
    names = set(IDS)
    assert {"astromorph.annotate", "astromorph.Model.predict", "astromorph.SimilarityIndex",
            "astromorph.preprocessing.preprocess_triplet", "astromorph.cli.main"} <= names


@pytest.mark.parametrize("name, func, doc", CALLABLES, ids=IDS)
def test_parameters_are_documented_in_order(name, func, doc):
    documented = _documented(_sections(doc).get("Parameters", ""))
    assert documented == [p.name for p in _parameters(func)], name


@pytest.mark.parametrize("name, func, doc", CALLABLES, ids=IDS)
def test_options_with_a_default_say_optional(name, func, doc):
    """``name : type, optional`` (numpydoc) for a parameter with a default."""
    defaults = {p.name for p in _parameters(func) if p.default is not p.empty}
    bare = [line for line in _sections(doc).get("Parameters", "").splitlines()
            if line.strip() and not line[0].isspace() and " : " in line
            and defaults & {n.strip() for n in line.split(" : ")[0].split(",")}
            and not re.search(r"\boptional\b|\bdefault\b", line.split(" : ", 1)[1])]
    assert not bare, f"{name}: {bare}"


@pytest.mark.parametrize("name, func, doc", CALLABLES, ids=IDS)
def test_a_function_that_returns_has_returns(name, func, doc):
    if func.__name__ == "__init__":
        return
    nodes = list(_own_nodes(_tree(func)))
    returns = any(isinstance(n, ast.Return) and n.value is not None
                  and not (isinstance(n.value, ast.Constant) and n.value.value is None)
                  for n in nodes)
    yields = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes)
    if returns or yields:
        assert {"Returns", "Yields"} & set(_sections(doc)), f"{name}: no Returns section"


@pytest.mark.parametrize("name, func, doc", CALLABLES, ids=IDS)
def test_options_are_keyword_only(name, func, doc):
    """A parameter with a default that may be given by position is an option given by
    position, unless listed in `POSITIONAL_OPTIONS`."""
    positional = [p.name for p in _parameters(func)
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is not p.empty and (name, p.name) not in POSITIONAL_OPTIONS]
    assert not positional, f"{name}: make {positional} keyword-only"


def test_positional_options_listed_exist():
    params = {(name, p.name) for name, func, _ in CALLABLES for p in _parameters(func)}
    assert set(POSITIONAL_OPTIONS) <= params


def _listed(section):
    """Class names of a Raises section's entries (``a.b.C``, ``~a.b.C``, ``C, D``)."""
    return [re.sub(r"^~?(?:astromorph\.exceptions\.)?", "", name.strip())
            for line in section.splitlines() if line.strip() and not line[0].isspace()
            for name in line.split(",") if name.strip()]


@pytest.mark.parametrize("name, func, doc", CALLABLES, ids=IDS)
def test_raises_names_astromorph_exceptions(name, func, doc):
    """A Raises section names classes of astromorph.exceptions (whose errors are also
    ValueError, TypeError...), among them one for each that the function raises itself."""
    section = _sections(doc).get("Raises")
    if section is None:  # not required everywhere; the report lists where it is missing
        return
    listed = _listed(section)
    unknown = [n for n in listed if not hasattr(astromorph.exceptions, n)]
    assert not unknown, f"{name}: Raises names {unknown}, not astromorph.exceptions classes"
    source = textwrap.dedent(inspect.getsource(func))
    raised = {n for n in re.findall(r"\braise (\w+)\(", source)
              if isinstance(getattr(astromorph.exceptions, n, None), type)}
    missing = [n for n in sorted(raised)
               if not any(c.__name__ in listed for c in getattr(astromorph.exceptions, n).__mro__)]
    assert not missing, f"{name} raises {missing}; its Raises section does not say so"


def _bad_option_calls():
    """(dotted public name, error) of the calls in tests/test_bad_options.py: the function
    or method each lambda calls last (outermost), and the error it is checked to raise."""
    import test_bad_options as bad

    owners = {"i": "astromorph.SimilarityIndex", "h": "astromorph.LabelHead",
              "g": "astromorph.GaussianMixture"}
    for call, error, _ in bad.PREPROCESSING + bad.TOP_LEVEL + bad.METHODS:
        lines, _ = inspect.getsourcelines(call)
        text = textwrap.dedent("".join(lines)).strip().lstrip("(").rstrip(",")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            tree = ast.parse(f"({text}")
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.Lambda)).body
        func = node.func
        if isinstance(func.value, ast.Call):  # load_model(...).predict(...)
            name = "astromorph.Model." + func.attr
        elif isinstance(func.value, ast.Name) and func.value.id in owners:
            name = f"{owners[func.value.id]}.{func.attr}"
        else:
            name = ast.unparse(func).replace("pp.", "astromorph.preprocessing.")
        yield name, error


BAD_CALLS = list(_bad_option_calls())


def test_raises_sections_cover_the_bad_option_errors():
    """A function whose docstring has a Raises section lists the error (a base class, or
    for a loosely checked error a subclass) that tests/test_bad_options.py checks it raises
    for a bad option."""
    docs = {name: doc for name, _, doc in CALLABLES}
    assert len(BAD_CALLS) > 50 and sum(n in docs for n, _ in BAD_CALLS) > 50
    missing = set()
    for name, error in BAD_CALLS:
        section = _sections(docs.get(name)).get("Raises")
        listed = [getattr(astromorph.exceptions, n, None) for n in _listed(section or "")]
        if section is not None and not any(issubclass(error, c) or issubclass(c, error)
                                           for c in listed if c):
            missing.add(f"{name}: {error.__name__}")
    assert not missing, sorted(missing)

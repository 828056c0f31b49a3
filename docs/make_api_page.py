"""Write docs/api.md from the package itself (so the reference never drifts from the code).

For ``astromorph``, ``astromorph.preprocessing``, ``astromorph.embeddings`` and
``astromorph.exceptions``: every name in ``__all__``, in that order, with its signature
and the first paragraph of its docstring; for classes, their public methods and
properties; for constants, their value and ``#:`` comment. Run after changing a public
name, a signature or a docstring's first paragraph::

    python docs/make_api_page.py [OUTPUT]    # default: docs/api.md

(``tests/test_repository.py`` fails while the committed page differs from a fresh one.)
"""
import ast
import enum
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODULES = ("astromorph", "astromorph.preprocessing", "astromorph.embeddings",
           "astromorph.exceptions")
WIDTH = 88


def summary(doc):
    """First paragraph of a docstring, on one line ('' when there is none)."""
    lines = inspect.cleandoc(doc or "").strip().split("\n\n")[0].splitlines()
    for i in range(1, len(lines)):  # a numpydoc section (Parameters, ...) is no summary
        if re.fullmatch(r"-{3,}", lines[i].strip()):
            lines = lines[:i - 1]
            break
    return " ".join(" ".join(lines).split())


def _stable(text):
    """No memory addresses, no paths of this machine."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    return text.replace(str(ROOT), "<repository>")


def _signature(name, obj, drop_first=False, wrap=True):
    """``name(params)``, wrapped at `WIDTH` columns if ``wrap``."""
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    # str(Signature) inserts the markers * and / where they belong
    text = _stable(str(sig.replace(parameters=params)))
    one = f"{name}{text}"
    if len(one) <= WIDTH or not wrap:
        return one
    inner = text[1:text.rindex(")")]
    tail = text[text.rindex(")"):]
    parts = [p.strip() for p in _split_params(inner)]
    lines, line = [], f"{name}("
    for i, p in enumerate(parts):
        piece = p + ("," if i < len(parts) - 1 else tail)
        if len(line) + len(piece) + 1 > WIDTH and line.strip() not in (f"{name}(", ""):
            lines.append(line.rstrip())
            line = "    " + piece
        else:
            line += ("" if line.endswith("(") or line == "    " else " ") + piece
    lines.append(line)
    return "\n".join(lines)


def _split_params(inner):
    """Split a parameter list at top-level commas (defaults may hold tuples or calls)."""
    parts, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(inner):
        if quote:
            quote = None if ch == quote and inner[i - 1] != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return parts


# ------------------------------------------------------------------ `#:` comments
def _comment_above(lines, lineno):
    """The ``#:`` comment lines just above line ``lineno`` (1-based), joined."""
    found = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(found)


def _assignments(body):
    """{name: line number} of the simple assignments in an AST body."""
    out = {}
    for node in body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                out.setdefault(t.id, node.lineno)
    return out


def _source_of(module):
    path = inspect.getsourcefile(module)
    text = Path(path).read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def constant_comment(module, name, _seen=None):
    """The ``#:`` comment of a module-level constant, following ``from .x import name``."""
    _seen = _seen or set()
    if module.__name__ in _seen:
        return ""
    _seen.add(module.__name__)
    lines, tree = _source_of(module)
    line = _assignments(tree.body).get(name)
    if line:
        return _comment_above(lines, line)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name
                                                     for a in node.names):
            real = next(a.name for a in node.names if (a.asname or a.name) == name)
            package = module.__name__ if hasattr(module, "__path__") else \
                module.__name__.rpartition(".")[0]
            target = importlib.import_module("." * node.level + (node.module or ""), package) \
                if node.level else importlib.import_module(node.module)
            return constant_comment(target, real, _seen)
    return ""


def _class_comments(cls):
    """{attribute: ``#:`` comment} of a class body's assignments (e.g. enum members)."""
    lines, tree = _source_of(inspect.getmodule(cls))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {n: _comment_above(lines, ln) for n, ln in _assignments(node.body).items()}
    return {}


# ------------------------------------------------------------------------ entries
def _own(cls):
    """The classes of ``cls``'s MRO defined in astromorph (whose members are documented)."""
    return [c for c in cls.__mro__ if c.__module__.split(".")[0] == "astromorph"]


def members(cls):
    """(kind, signature or name, summary) of a class's public methods, properties and
    enum members, in definition order (subclass first)."""
    out, seen = [], set()
    if issubclass(cls, enum.Enum):
        comments = _class_comments(cls)
        for name, member in cls.__members__.items():
            seen.add(name)
            out.append(("member", f"{name} = {member.value!r}", comments.get(name, "")))
    for klass in _own(cls):
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, property):
                out.append(("property", name, summary(value.__doc__)))
            elif isinstance(value, classmethod):
                out.append(("classmethod", _signature(name, getattr(cls, name), wrap=False),
                            summary(value.__func__.__doc__)))
            elif isinstance(value, staticmethod):
                out.append(("staticmethod", _signature(name, value.__func__, wrap=False),
                            summary(value.__func__.__doc__)))
            elif inspect.isfunction(value):
                out.append(("method", _signature(name, value, drop_first=True, wrap=False),
                            summary(value.__doc__)))
            else:
                out.append(("attribute", f"{name} = {_stable(repr(value))}",
                            _class_comments(klass).get(name, "")))
    return out


def _init_signature(cls):
    """``Name(params)`` when astromorph defines the constructor, else ``None`` (exceptions
    and enums: their signatures come from Python and differ between its versions)."""
    if issubclass(cls, enum.Enum):
        return None
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            return _signature(cls.__name__, cls) if klass in _own(cls) else None
    return None


def _canonical(obj, name):
    """The public module that documents ``obj`` in full: the one of `MODULES` nearest the
    module that defines it and listing it in ``__all__``."""
    where = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isfunction(obj)) \
        else None
    if where is None:
        return None
    best = None
    for modname in MODULES:
        mod = importlib.import_module(modname)
        if name in mod.__all__ and (where == modname or where.startswith(modname + ".")):
            if best is None or len(modname) > len(best):
                best = modname
    return best


def entries():
    """Every public name: a list of dicts (module, name, kind, signature, summary, value,
    members, see), in the order of `MODULES` and of each one's ``__all__``."""
    out = []
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            entry = {"module": modname, "name": name, "signature": None, "value": None,
                     "members": [], "see": None}
            home = _canonical(obj, name)
            if home and home != modname:
                entry["see"] = f"{home}.{name}"
            if inspect.ismodule(obj):
                entry["kind"] = "module"
                entry["summary"] = summary(obj.__doc__)
                entry["members"] = [
                    ("constant", f"{c} = {_stable(repr(getattr(obj, c)))}",
                     constant_comment(obj, c))
                    for c in _assignments(_source_of(obj)[1].body)
                    if re.fullmatch(r"[A-Z][A-Z0-9_]*", c)]
            elif inspect.isclass(obj):
                entry["kind"] = ("warning" if issubclass(obj, Warning) else "exception"
                                 if issubclass(obj, BaseException) else "class")
                entry["summary"] = summary(obj.__doc__)
                if not entry["see"]:
                    entry["signature"] = _init_signature(obj)
                    entry["members"] = members(obj)
                    entry["bases"] = [_public_base(b) for b in obj.__bases__ if b is not object]
            elif callable(obj):
                entry["kind"] = "function"
                entry["summary"] = summary(obj.__doc__)
                if not entry["see"]:
                    entry["signature"] = _signature(name, obj)
            else:
                entry["kind"] = "constant"
                entry["value"] = _stable(repr(obj))
                entry["summary"] = constant_comment(mod, name)
            out.append(entry)
    return out


def _public_base(base):
    """A base class as users import it (``astromorph.exceptions.InputError``,
    ``collections.abc.Mapping``, ``ValueError``)."""
    home = _canonical(base, base.__name__)
    if home:
        return f"{home}.{base.__qualname__}"
    if base.__module__ == "builtins":
        return base.__qualname__
    module = "collections.abc" if base.__module__ == "_collections_abc" else base.__module__
    return f"{module}.{base.__qualname__}"


def render():
    intro = ("Generated from the package by `docs/make_api_page.py`: every name in the "
             "`__all__` of the public modules, in that order, with its signature and the first "
             "paragraph of its docstring. The docstrings, with their Parameters, Returns and "
             "Raises, are the reference (`help(astromorph.annotate)`); the guides show how the "
             "pieces fit together: [annotate.md](annotate.md), [predict.md](predict.md), "
             "[embedding.md](embedding.md), [model-cards.md](model-cards.md).")
    lines = ["# API reference", "", textwrap.fill(intro, WIDTH), ""]
    by_module = {}
    for e in entries():
        by_module.setdefault(e["module"], []).append(e)
    lines += ["Modules: " + ", ".join(f"`{m}` ({len(by_module[m])} names)" for m in MODULES)
              + ".", ""]
    for modname in MODULES:
        mod = importlib.import_module(modname)
        lines += [f"## `{modname}`", "", summary(mod.__doc__), ""]
        for e in by_module[modname]:
            kind = e["kind"]
            lines += [f"### `{modname}.{e['name']}`", ""]
            if e["see"]:
                lines += [f"The {kind} `{e['see']}` (documented there): {e['summary']}", ""]
                continue
            if kind == "constant":
                lines += [f"Constant: `{e['value']}`" + (f". {e['summary']}" if e["summary"]
                                                          else ""), ""]
                continue
            if kind == "module":
                lines += [f"Module: {e['summary']}", ""]
                if e["members"]:
                    lines += ["| constant | value | meaning |", "|---|---|---|"]
                    for _, text, comment in e["members"]:
                        const, _, value = text.partition(" = ")
                        value = value.replace("|", "\\|")
                        lines.append(f"| `{const}` | `{value}` | {comment} |")
                    lines.append("")
                continue
            if e["signature"]:
                lines += ["```python", e["signature"], "```", ""]
            if kind in ("class", "exception", "warning"):
                bases = ", ".join(f"`{b}`" for b in e.get("bases", []))
                label = {"class": "Class", "exception": "Exception", "warning": "Warning"}[kind]
                lines += [f"{label}" + (f" (bases: {bases})" if bases else "") + ". "
                          + e["summary"], ""]
            else:
                lines += [e["summary"], ""]
            for member_kind, text, text_summary in e["members"]:
                lines.append(f"- {member_kind} `{text}`" + (f": {text_summary}"
                                                             if text_summary else ""))
            if e["members"]:
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    """Write the page to docs/api.md, or to the path given as the only argument."""
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy
    path = Path(argv[0]) if argv else ROOT / "docs" / "api.md"
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

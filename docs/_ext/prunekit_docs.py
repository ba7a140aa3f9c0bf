"""Sphinx extension of prunekit's documentation.

Two things the pages need and Sphinx does not do by itself:

* **Benchmark results** (``.. benchmark-result:: quality.md``): the markdown
  files that ``benchmarks/`` writes into ``benchmarks/results/`` are included
  as they are when the build runs (parsed by myst-parser), with their plot
  (``quality.png`` beside ``quality.md``) when there is one. A file that has not
  been produced yet gives a short note instead of an error, so the build passes
  with ``-W`` whichever results exist. ``.. benchmark-results::`` includes every
  other result file, so a new benchmark shows up without editing a page.
* **The API reference**, generated from the code: at ``builder-inited`` one
  page per public module of ``prunekit`` is written into ``docs/api/``
  (ignored by git), with an autodoc directive for every public symbol defined
  in that module (its ``__all__``, or its names without a leading underscore);
  names a package re-exports link to the module that defines them.
  ``.. prunekit-api-index::`` lays those pages out in captioned toctrees, and
  puts any module no group claims under "Other modules", so a new module is in
  the reference the moment it exists.

Configuration values: ``prunekit_results_dir`` (default
``../benchmarks/results``, relative to the documentation's source folder),
``prunekit_api_package`` (the package to document, ``"prunekit"`` in ``conf.py``;
empty: no API pages) and ``prunekit_api_dir`` (``"api"``).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: result files of ``.. benchmark-results::`` that come first, in this order
KNOWN_RESULTS = ("quality.md", "selection_cpu.md", "prefill_cpu.md", "encoder_cosine.md")


# --------------------------------------------------------------------------- benchmark results


def _results_dir(env: Any) -> Path:
    path = Path(env.config.prunekit_results_dir)
    return path if path.is_absolute() else (Path(env.srcdir) / path).resolve()


def _src_uri(env: Any, path: Path) -> str:
    """``path`` as an image URI Sphinx resolves from the source folder (``/`` = srcdir)."""
    rel = Path(_relpath(path, Path(env.srcdir)))
    return "/" + rel.as_posix()


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def _promote_headings(text: str) -> str:
    """Drop a leading ``# title``; shift the other headings so the highest is ``#``.

    The page gives the section its own title; the file's sections become its
    sub-sections. Lines inside fenced code blocks are left alone.
    """
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    fence = None
    levels = []
    headings = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        level = len(line) - len(line.lstrip("#"))
        if fence is None and 1 <= level <= 6 and line[level : level + 1] == " ":
            headings.append(i)
            levels.append(level)
    shift = min(levels) - 1 if levels else 0
    for i in headings:
        lines[i] = lines[i][shift:]
    return "\n".join(lines) + "\n"


def _markdown_nodes(directive: SphinxDirective, path: Path) -> list[nodes.Node]:
    """The markdown file parsed by myst-parser, first ``# title`` dropped (the page has its own)."""
    text = _promote_headings(path.read_text(encoding="utf-8"))
    try:
        from myst_parser.parsers.sphinx_ import MystParser
    except ImportError:  # no myst-parser: show the markdown source, still readable
        block = nodes.literal_block(text, text)
        block["language"] = "markdown"
        return [block]
    settings = directive.state.document.settings
    document = nodes.document(settings, directive.state.document.reporter)
    document["source"] = str(path)
    document.note_source(str(path), 0)
    MystParser().parse(text, document)
    env = directive.env
    for image in list(document.findall(nodes.image)):
        uri = image["uri"]
        if "://" in uri:
            continue
        target = (path.parent / uri).resolve()
        if target.is_file():
            image["uri"] = _src_uri(env, target)
            env.note_dependency(str(target))
        else:  # a plot the markdown names but that is not there: say so, do not fail
            image.replace_self(_note(f"Plot {uri} has not been produced yet."))
    return list(document.children)


def _note(text: str) -> nodes.Node:
    note = nodes.note()
    note += nodes.paragraph(text, text)
    return note


def _result_nodes(directive: SphinxDirective, name: str, image: str | None) -> list[nodes.Node]:
    env = directive.env
    folder = _results_dir(env)
    path = folder / name
    env.note_dependency(str(path))  # rebuilt when it appears or changes
    if not path.is_file():
        return [
            _note(
                f"benchmarks/results/{name} has not been produced yet; this section fills in "
                "when the benchmark writes it (see benchmarks/README.md)."
            )
        ]
    out = _markdown_nodes(directive, path)
    image = image if image is not None else Path(name).with_suffix(".png").name
    picture = folder / image
    text = path.read_text(encoding="utf-8")
    if image and picture.is_file() and image not in text:
        env.note_dependency(str(picture))
        node = nodes.image(uri=_src_uri(env, picture), alt=image)
        out.append(node)
    return out


class BenchmarkResult(SphinxDirective):
    """``.. benchmark-result:: NAME.md``: the result file, its plot, or a "not yet produced" note.

    Option ``:image: FILE.png`` names the plot (default: ``NAME.png``; empty: none).
    """

    required_arguments = 1
    option_spec = {"image": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        return _result_nodes(self, self.arguments[0], self.options.get("image"))


class BenchmarkResults(SphinxDirective):
    """``.. benchmark-results::``: every result file not named in ``:exclude:``, one section each."""

    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        folder = _results_dir(self.env)
        self.env.note_dependency(str(folder))
        excluded = set((self.options.get("exclude") or "").split())
        names = sorted(p.name for p in folder.glob("*.md")) if folder.is_dir() else []
        names = [n for n in KNOWN_RESULTS if n in names] + [
            n for n in names if n not in KNOWN_RESULTS
        ]
        out: list[nodes.Node] = []
        for name in names:
            if name in excluded:
                continue
            path = folder / name
            first = path.read_text(encoding="utf-8").splitlines()[:1]
            title = first[0][2:].strip() if first and first[0].startswith("# ") else name
            section = nodes.section(ids=[nodes.make_id(f"result-{Path(name).stem}")])
            section += nodes.title(title, title)
            section += _result_nodes(self, name, None)
            out.append(section)
        if not out:
            out.append(_note("No other benchmark results have been produced yet."))
        return out


# --------------------------------------------------------------------------- API reference


def public_modules(package: str) -> list[str]:
    """``package`` and every module below it whose dotted path has no ``_``-prefixed part."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _module_source(module: Any) -> ast.Module:
    path = getattr(module, "__file__", None)
    return ast.parse(Path(path).read_text(encoding="utf-8")) if path else ast.Module(body=[])


def _top_level(module: Any) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Names bound at module level (source order), and ``from X import y as z`` imports."""
    defined: list[str] = []
    imported: dict[str, tuple[str, str]] = {}
    for node in _module_source(module).body:
        targets: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
        for name in targets:
            if name not in defined:
                defined.append(name)
    return defined, imported


def public_names(module: Any) -> list[str]:
    """The module's ``__all__``, or its own top-level names without a leading underscore."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    defined, _ = _top_level(module)
    return [n for n in defined if not n.startswith("_")]


def home(module_name: str, name: str, _depth: int = 0) -> tuple[str, str] | None:
    """``(module, name)`` where ``module_name.name`` is defined, following ``from`` imports."""
    module = importlib.import_module(module_name)
    defined, imported = _top_level(module)
    if name in defined:
        return module_name, name
    if name in imported and _depth < 20:
        source, original = imported[name]
        try:
            return home(source, original, _depth + 1)
        except ImportError:
            return None
    return None


def _documented_data(module_name: str) -> set[str]:
    """Module-level names with a ``#:`` comment or a docstring after the assignment."""
    from sphinx.pycode import ModuleAnalyzer

    try:
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    except Exception:  # no source
        return set()
    return {name for (scope, name) in docs if scope == ""}


def _summary(module: Any, name: str) -> str:
    """`` -- first sentence of the docstring`` of a class, function or module; ``""`` for data."""
    obj = getattr(module, name, None)
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
        return ""
    doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0].replace("\n", " ")
    return f" -- {doc}" if doc else ""


def _directive_for(module: str, name: str, obj: Any) -> list[str]:
    """The autodoc directive of one symbol; ``[]`` for data without a doc comment.

    Undocumented data would otherwise show the docstring of its type (``dict``,
    ``ndarray``); ``tests/test_docs.py`` reports it as a missing docstring.
    """
    target = f"{module}.{name}"
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        return [f".. {kind}:: {target}", "   :members:", "   :show-inheritance:", ""]
    if inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return [f".. autofunction:: {target}", ""]
    if name not in _documented_data(module):
        return []
    lines = [f".. autodata:: {target}"]
    value = repr(obj)
    if len(value) > 80 or " at 0x" in value or "\n" in value:
        lines.append("   :no-value:")
    return [*lines, ""]


def module_page(module_name: str) -> str:
    """The reST of one module's API page."""
    module = importlib.import_module(module_name)
    lines = [module_name, "=" * len(module_name), "", f".. automodule:: {module_name}", ""]
    own, elsewhere = [], []
    for name in public_names(module):
        if inspect.ismodule(getattr(module, name, None)):
            elsewhere.append((name, getattr(module, name).__name__, "mod"))
            continue
        where = home(module_name, name)
        if where is None or where[0] == module_name:
            own.append(name)
        else:
            elsewhere.append((name, f"{where[0]}.{where[1]}", "obj"))
    if elsewhere:
        lines += ["Also importable from here, documented where they are defined:", ""]
        for name, target, role in elsewhere:
            summary = _summary(importlib.import_module(module_name), name)
            lines.append(f"* :py:{role}:`{module_name}.{name} <{target}>`" + summary)
        lines.append("")
    defined, _ = _top_level(module)
    own.sort(key=lambda n: defined.index(n) if n in defined else len(defined))
    for name in own:
        if hasattr(module, name):
            lines += _directive_for(module_name, name, getattr(module, name))
    return "\n".join(lines) + "\n"


def write_api_pages(app: Sphinx) -> None:
    """Write ``<api_dir>/<module>.rst`` for every public module (only files whose text changed).

    Nothing when ``prunekit_api_package`` is empty.
    """
    if not app.config.prunekit_api_package:
        return
    folder = Path(app.srcdir) / app.config.prunekit_api_dir
    folder.mkdir(exist_ok=True)
    wanted = set()
    for module_name in public_modules(app.config.prunekit_api_package):
        path = folder / f"{module_name}.rst"
        wanted.add(path.name)
        text = module_page(module_name)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    for stale in folder.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()


class ApiIndex(SphinxDirective):
    """``.. prunekit-api-index::``: captioned toctrees of the generated module pages.

    Each content line is ``Caption: pattern pattern ...`` (module-name wildcards);
    a module goes to the first group whose pattern matches it, modules no group
    claims to a last group, "Other modules".
    """

    has_content = True

    def run(self) -> list[nodes.Node]:
        api_dir = self.config.prunekit_api_dir
        modules = public_modules(self.config.prunekit_api_package)
        claimed: set[str] = set()
        groups: list[tuple[str, list[str]]] = []
        for line in self.content:
            if not line.strip():
                continue
            caption, _, patterns = line.partition(":")
            members = [
                m
                for m in modules
                if m not in claimed and any(fnmatch.fnmatchcase(m, p) for p in patterns.split())
            ]
            claimed.update(members)
            groups.append((caption.strip(), members))
        rest = [m for m in modules if m not in claimed]
        if rest:
            groups.append(("Other modules", rest))
        text: list[str] = []
        for caption, members in groups:
            if not members:
                continue
            text += [".. toctree::", f"   :caption: {caption}", "   :maxdepth: 1", ""]
            text += [f"   {api_dir}/{m}" for m in members]
            text.append("")
        container = nodes.container()
        nested_parse_with_titles(
            self.state, StringList(text, source="prunekit-api-index"), container
        )
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("prunekit_results_dir", "../benchmarks/results", "env")
    app.add_config_value("prunekit_api_package", "", "env")
    app.add_config_value("prunekit_api_dir", "api", "env")
    app.add_directive("benchmark-result", BenchmarkResult)
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("prunekit-api-index", ApiIndex)
    app.connect("builder-inited", write_api_pages)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

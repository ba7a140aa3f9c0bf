"""Sphinx configuration for prunekit's documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``tox -e docs``,
and ``.ci/run``). The ``>>>`` examples of the pages and of the docstrings run as tests
in ``tests/test_docs.py``, which also builds the site and checks that every public
symbol is in the API reference with a docstring.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))  # build from a checkout
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "prunekit"
author = "prunekit developers"
copyright = "prunekit developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",  # a copy button on every code block (the `docs` extra)
    "prunekit_docs",  # benchmark results, the generated API reference (docs/_ext)
]
try:  # markdown benchmark results are parsed with myst-parser (the `docs` extra)
    import myst_parser  # noqa: F401

    extensions.append("myst_parser")
except ImportError:  # prunekit_docs then shows them as markdown source
    pass
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# adapters list their attach() options under "Options:"
napoleon_custom_sections = [("Options", "Keyword Arguments")]

# The API reference: one generated page per module of this package, in docs/api/.
prunekit_api_package = "prunekit"
prunekit_api_dir = "api"
# The results of benchmarks/ (markdown and plots) are read from here at build time.
prunekit_results_dir = "../benchmarks/results"
# They are written by scripts, not by hand: heading levels and links inside them are
# theirs to choose, and must not fail the build.
suppress_warnings = ["myst.header", "myst.xref_missing"]

# Furo: a maintained, responsive theme whose wide tables and code blocks scroll inside
# the page instead of overflowing it (the `docs` extra)
html_theme = "furo"
html_title = "prunekit"
# the prompts of >>> examples and shell sessions are not copied
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

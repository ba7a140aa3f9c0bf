"""Sphinx configuration for prunekit's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # build from a checkout without installing

project = "prunekit"
author = "prunekit developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.doctest"]
autodoc_typehints = "description"
html_theme = "alabaster"
exclude_patterns = ["_build"]

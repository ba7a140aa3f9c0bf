"""Sphinx configuration for prunekit's documentation."""

project = "prunekit"
author = "prunekit developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.doctest"]
autodoc_typehints = "description"
html_theme = "alabaster"
exclude_patterns = ["_build"]

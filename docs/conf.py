"""Sphinx configuration of the flask-apiguard documentation.

Build it with ``make docs`` (``sphinx-build -W --keep-going -q -b html docs docs/_build/html``).
Sphinx's own extensions, its built-in theme and myst-parser (for the changelog) are used:
the build needs no network.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import flask_apiguard

# -- project --------------------------------------------------------------------------------
project = "flask-apiguard"
author = "flask-apiguard maintainers"
copyright = "flask-apiguard maintainers, BSD-3-Clause"
release = flask_apiguard.__version__
version = ".".join(release.split(".")[:2])

# -- general --------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",  # renders CHANGELOG.md in changelog.rst
]
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "performance/*"]  # included by performance.rst
nitpicky = False
pygments_style = "sphinx"
highlight_language = "python3"

# -- autodoc --------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# The error classes subclass werkzeug's exceptions; their docs are written here, not
# inherited from werkzeug.
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}

# -- HTML -----------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"flask-apiguard {release}"
html_theme_options = {
    "description": "Harden a Flask REST API in one line.",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {
    "**": ["about.html", "navigation.html", "relations.html", "searchbox.html"],
}
html_static_path: list[str] = []

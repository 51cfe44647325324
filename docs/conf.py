"""Sphinx configuration: the README, the guide pages and BENCHMARKS.md (Markdown,
through MyST) and the API reference from the docstrings. The source folder is the
repository root, so that the pages' links work on GitHub and here alike:

    sphinx-build -W -c docs . docs/_build/html      # what ``make docs`` runs
"""

from piggyback_avalanche import __version__

project = "piggyback-avalanche"
author = "the piggyback-avalanche developers"
release = __version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "docs/index"
include_patterns = ["README.md", "BENCHMARKS.md", "docs/**"]
exclude_patterns = ["docs/_build"]
myst_heading_anchors = 3  # the pages link to their sections by anchor

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # torch's and Avalanche's docstrings are theirs to document
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"piggyback-avalanche {release}"

"""Sphinx configuration of txharp's documentation (HTML site and man pages).

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
and ``-b man docs docs/_build/man``.  The pages document the txharp in this
checkout: its root goes first on ``sys.path``.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "_ext"))

from txharp._version import __version__  # noqa: E402

project = "txharp"
author = "the txharp authors"
copyright = "the txharp authors; MIT licence"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "txharp_docs",  # option lists from the code, optional pages, graphviz fallback
]
# docs/performance.md (Markdown) is read by MyST when it is installed.
if importlib.util.find_spec("myst_parser") is not None:
    extensions.append("myst_parser")
    source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
    myst_heading_anchors = 3
elif os.path.exists(os.path.join(HERE, "performance.md")):
    raise RuntimeError(
        "docs/performance.md needs myst-parser: pip install myst-parser "
        "(it is in txharp's test and docs extras)"
    )

root_doc = "index"
exclude_patterns = ["_build", "examples", "README.md", "**/README.md"]
templates_path = []
default_role = "literal"
pygments_style = "sphinx"
# Command lines are written in prose: keep "--option" as typed.
smartquotes = False
highlight_language = "none"
# Bare-URL and section-anchor checks only; no network access at build time.
suppress_warnings = []

# -- autodoc -----------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
# Imported lazily by code paths the docs never take; never needed to import.
autodoc_mock_imports = []

# -- graphviz (used when Graphviz's dot is installed; see _ext/txharp_docs.py)

graphviz_output_format = "svg"

# -- HTML ---------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"txharp {release}"
html_static_path = ["_static"]
html_css_files = ["txharp.css"]
html_theme_options = {
    "description": "Twisted-native HarpCaller: clients, harp-proxy and harpd",
    "fixed_sidebar": True,
    "page_width": "1180px",
    "sidebar_width": "230px",
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}

# -- man pages ----------------------------------------------------------------

man_pages = [
    ("man/txharp", "txharp", "command line client for HarpCaller dispatchers and harpd", [author], 1),
    ("man/harp-proxy", "harp-proxy", "relaying HarpCaller dispatcher with durable job records", [author], 8),
    ("man/txharp-harpd", "txharp-harpd", "HarpCaller RPC daemon on Twisted (twistd harpd)", [author], 8),
    ("man/txharp-library", "txharp", "Twisted and synchronous Python clients for HarpCaller", [author], 3),
]
man_show_urls = False

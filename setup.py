"""Build script; the metadata lives in setup.cfg.

``twisted/plugins/`` deliberately has no ``__init__.py`` (the directory is a
namespace shared with every other Twisted plugin), so ``find_packages`` cannot
see it: it is listed here by name, with its module as package data.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["txharp", "txharp.*", "harpd", "harpd.*"])
    + ["twisted.plugins"],
    package_data={
        "txharp": ["py.typed"],
        "twisted.plugins": ["txharp_*.py"],
    },
)

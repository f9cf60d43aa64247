"""twistd plugin: ``twistd harpd`` runs txharp's HarpCaller RPC daemon.

This directory must not get an ``__init__.py``: ``twisted.plugins`` is a
namespace that every installed project adds plugins to.
"""
from twisted.application.service import ServiceMaker

harpd = ServiceMaker(
    "txharp harpd",
    "txharp.daemon.tap",
    "HarpCaller RPC daemon: runs procedures from a Python module for callers over TLS",
    "harpd",
)

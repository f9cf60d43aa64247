"""Twisted plugin: ``twistd harp-proxy``, the relaying HarpCaller dispatcher.

This directory is a namespace shared with every Twisted plugin: it has no
``__init__.py``, on purpose.
"""
from twisted.application.service import ServiceMaker

harp_proxy = ServiceMaker(
    "harp-proxy",
    "txharp.proxy.tap",
    "HarpCaller-compatible dispatcher relaying calls to harpd daemons over TLS",
    "harp-proxy",
)

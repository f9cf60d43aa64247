"""Compatibility package: the names the original harpd gave procedure modules.

Modules written for the original daemon import ``harpd.proc``; txharp's
daemon also executes the procedures module as ``harpd.__procedures__``.
"""

"""txharp: Twisted-native clients, relaying dispatcher and daemon for HarpCaller.

The public entry points live in submodules: :mod:`txharp.caller` (the
dispatcher client), :mod:`txharp.server` (the harpd client),
:mod:`txharp.errors` (the exception tree) and :mod:`txharp.wire` (the pure
protocol layer).
"""
from txharp._version import __version__

__all__ = ["__version__"]

"""harpd on Twisted: a daemon that runs procedures for HarpCaller clients.

The daemon speaks the harpd protocol over TLS (:mod:`txharp.daemon.protocol`),
authenticates each request (:mod:`txharp.daemon.auth`) and runs every call in
a child process of its own (:mod:`txharp.daemon.runner`, whose other end is
:mod:`txharp.daemon.child`).  Procedures are ordinary Python functions
decorated with :func:`~txharp.daemon.procedures.procedure` or
:func:`~txharp.daemon.procedures.streaming_procedure`
(:mod:`txharp.daemon.procedures`), also importable as ``harpd.proc`` so that
modules written for the original daemon run unchanged.  ``twistd harpd``
(:mod:`txharp.daemon.tap`) reads the original's YAML configuration
(:mod:`txharp.daemon.config`).

This package imports nothing on purpose: the child process imports
``procedures`` and ``child`` only, and must start without loading Twisted.
"""

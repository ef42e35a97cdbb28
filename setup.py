"""The optional C part of the DNS guard's UDP hot path (daemon/nocpolicy/dns/_fastudp.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler and the
Python headers the install still succeeds and the guard runs its Python loop (docs/dns.md).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("nocpolicy.dns._fastudp", ["daemon/nocpolicy/dns/_fastudp.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wno-missing-braces"], optional=True)])

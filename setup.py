"""The optional C parts: the DNS guard's UDP hot path (daemon/nocpolicy/dns/_fastudp.c) and the
live session table's int -> int map (daemon/nocpolicy/sessions/_intmap.c).

Everything else is in pyproject.toml. Both extensions are optional: without a C compiler and the
Python headers the install still succeeds, the guard runs its Python loop (docs/dns.md) and the
session table its Python IntMap (docs/sessions.md).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("nocpolicy.dns._fastudp", ["daemon/nocpolicy/dns/_fastudp.c"],
              extra_compile_args=["-O2", "-Wall", "-Wno-missing-braces"], optional=True),
    Extension("nocpolicy.sessions._intmap", ["daemon/nocpolicy/sessions/_intmap.c"],
              extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
              optional=True),
])

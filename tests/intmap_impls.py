"""Both IntMap implementations, for the tests to run against each: the Python class and the C
extension's type (daemon/nocpolicy/sessions/_intmap.c), skipped with the reason when not built."""

from __future__ import annotations

import pytest

from nocpolicy.sessions.intmap import IntMap, PyIntMap

INTMAPS = [pytest.param(PyIntMap, id="python"),
           pytest.param(IntMap, id="c", marks=pytest.mark.skipif(
               IntMap is PyIntMap, reason="the C extension nocpolicy.sessions._intmap is not built"))]

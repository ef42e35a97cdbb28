"""gcpause.settle(): what start-up or a reload built is frozen out of later collections (a
full collection under a flood held the DNS guard's loop ~50 ms, issue 14), and what a later
settle finds unreachable -- the replaced policy -- is still freed, never kept for ever."""

from __future__ import annotations

import gc
import weakref

from nocpolicy import gcpause


class Node:
    def __init__(self):
        self.me = self          # a reference cycle: only the cyclic collector frees it


def test_settle_freezes_then_frees_what_became_garbage():
    try:
        old = Node()
        alive = weakref.ref(old)
        gcpause.settle()
        assert gc.get_freeze_count() > 0
        del old                                       # "the replaced policy"
        gc.collect()
        assert alive() is not None                    # frozen: ordinary collections skip it
        gcpause.settle()                              # the next reload's settle
        assert alive() is None                        # freed, not leaked
    finally:
        gc.unfreeze()


def test_settle_waits_while_a_bulk_build_has_the_collector_paused():
    try:
        gc.unfreeze()
        with gcpause.gc_paused():
            gcpause.settle()
            assert gc.get_freeze_count() == 0
            assert not gc.isenabled()
    finally:
        gc.unfreeze()

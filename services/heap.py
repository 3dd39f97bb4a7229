"""The serving process's garbage collector: what is loaded once is taken out of its sight.

    freeze_long_lived_objects()   # after the models load, and again after each swap

A full (generation 2) collection walks every tracked object: the libraries, tokenizers and loaded models are
hundreds of thousands of objects that never become garbage, and walking them stopped the event loop for
0.11-0.14 s about every 4 s under load (benchmarks/README, issue 15, session 11). ``gc.freeze`` moves the
objects alive now to a permanent generation the collector skips; it only stops the cycle collector from
looking at them: a frozen object is still freed as soon as nothing refers to it. A swapped-out model is freed
that way, since a loaded model holds no reference cycles (tests/services/test_reloader.py pins that).
"""

from __future__ import annotations

import gc


def freeze_long_lived_objects() -> int:
    """Collect what is garbage now, freeze the rest; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def frozen_objects() -> int:
    return gc.get_freeze_count()

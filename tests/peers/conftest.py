"""Peer cross-checks: collected only where torch and the genuine peers are installed.

``peers_harness.py`` is a helper module, not a test module: keep ``--doctest-modules`` from
importing it (it imports torch) in environments without the ``peers`` extra.
"""

collect_ignore = ["peers_harness.py"]

"""Peer cross-checks: they run only where torch and the genuine peers are installed.

``peers_harness.py`` and ``peers_divergences.py`` are helper modules (they import torch), not
test modules: keep ``--doctest-modules`` from importing them where the ``peers`` extra is absent.
The test modules skip themselves with the install hint.
"""

collect_ignore = ["peers_harness.py", "peers_divergences.py"]

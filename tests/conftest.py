"""Shared pytest configuration: hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) derandomises the property tests so CI is reproducible.
``HYPOTHESIS_PROFILE=random`` (.ci/run's second pass, with ``--hypothesis-seed=S``) draws fresh
examples from the seed it prints, without the local example database, so a failure is reproduced
by the seed alone.  The default profile ``dev`` is what the README's ``python -m pytest`` uses; the
properties hold under any seed (issue 17: the strategies in refcam.testing are safe by
construction).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=80, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "random", max_examples=60, deadline=None, print_blob=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# sweeping many seeds on a loaded machine: fewer examples per seed, fresh draws per seed
settings.register_profile(
    "seeds", max_examples=15, deadline=None, print_blob=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# refcam.autodiff.cache: the suite never reads or fills the user's cache (~/.cache/refcam); one
# fresh folder per test run (tests of the cache itself point REFCAM_CACHE_DIR elsewhere).
if "REFCAM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["REFCAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="refcam-test-cache-")

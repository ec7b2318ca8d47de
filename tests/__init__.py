"""
The test suite (run as ``python -m twisted.trial tests``).

Hypothesis: no per-example deadline.  CI runs on a loaded 2-core machine,
where a slow first example says nothing about the code.
"""

from hypothesis import settings

settings.register_profile("remotedialer", deadline=None)
settings.load_profile("remotedialer")

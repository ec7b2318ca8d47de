"""Tests of L{remotedialer.ops}."""

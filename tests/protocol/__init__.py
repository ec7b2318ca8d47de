"""Tests of L{remotedialer.protocol}."""

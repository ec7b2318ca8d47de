"""Tests of L{remotedialer.client}."""

"""Tests of L{remotedialer.server}."""

"""Tests of L{remotedialer.tunnel}."""

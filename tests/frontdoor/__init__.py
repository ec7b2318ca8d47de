"""Tests of L{remotedialer.frontdoor}."""

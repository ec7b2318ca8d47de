"""Tests of L{remotedialer.proxies}."""

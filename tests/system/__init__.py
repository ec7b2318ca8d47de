"""
System tests: real sockets, the real programs, TLS, faults, Go interop,
a browser.  Slower than the rest; run alone with C{trial tests.system}.
"""

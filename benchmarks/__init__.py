"""
The remotedialer benchmark suite: ``python -m benchmarks`` (``--smoke`` for
the seconds-long variant CI runs; ``--help`` for the rest).

Module map:
    __main__    the command line: pick scenarios, run them, print the table
    harness     the load generator's side: child processes, ports, /proc
                sampling, medians and spreads, the table and the JSON
    payload     the deterministic payload every part sends and checks
    targets     the target services, ``python -m benchmarks.targets ROLE``:
                a TCP payload source/sink, an HTTP /big server, a plain
                Twisted relay (the baseline)
    roles       library-level tunnel roles, ``python -m benchmarks.roles``:
                a Server running transfers, port-forwards and groups of open
                streams through server.endpoint(); a TunnelClient; many
                TunnelClients
    loadgen     readers in the load generator: an HTTP GET over a plain
                socket (fast or paced), and wrk
    scenarios   stream, streams100, frontdoor, requests, forward, peerhop,
                slowreader (and Go's programs beside ours)
    scale       streams (10,000 on one session), sessions (2,000 on one server)

Nothing here is imported by the library or its tests.
"""

"""
twistd plugins: ``twistd remotedialer-server`` and ``twistd remotedialer-client``.

Imported by every twistd run, so it only names the modules that do the work.
"""

from twisted.application.service import ServiceMaker

remotedialer_server = ServiceMaker(
    "remotedialer-server",
    "remotedialer._tap.server",
    "Reverse-tunnel server (Go remotedialer compatible): clients connect, the server dials through them.",
    "remotedialer-server",
)

remotedialer_client = ServiceMaker(
    "remotedialer-client",
    "remotedialer._tap.client",
    "Reverse-tunnel client (Go remotedialer compatible): keeps a tunnel to a server and dials for it.",
    "remotedialer-client",
)

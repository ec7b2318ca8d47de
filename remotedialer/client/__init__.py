"""
The client role: one tunnel kept open to a server, serving the server's
dials under a dial policy.  Built on L{remotedialer.tunnel}; the server's
peer links are clients too, so L{remotedialer.server} may import this
package, never the reverse.

Module map:
    _client   the client service (a link serving the server's dials)
    _link     an outgoing WebSocket kept up by ClientService
    _dialer   Connect targets -> endpoints, under a dial policy
    _acl      the dial allow-list: parsed rules, canonical addresses
"""

from remotedialer.client._acl import DialACL, parse_rule
from remotedialer.client._client import TunnelClient, endpoint_for_url
from remotedialer.client._dialer import LocalDialer, allow_all, allow_patterns, deny_all

__all__ = [
    "TunnelClient",
    "endpoint_for_url",
    "LocalDialer",
    "allow_all",
    "allow_patterns",
    "deny_all",
    "DialACL",
    "parse_rule",
]

"""
The client role: one tunnel kept open to a server, serving the server's
dials under a dial policy.  Built on L{remotedialer.tunnel}; the server's
peer links are clients too, so L{remotedialer.server} may import this
package, never the reverse.

Module map:
    _client        the client service (a link serving the server's dials)
    _link          an outgoing WebSocket kept up; one log line per failed attempt
    _redial        connect, and again after a failure or a loss, as the link says
    _proxyrule     which HTTP proxy a server URL goes through (Go's HTTPS_PROXY/NO_PROXY)
    _proxyconnect  the CONNECT through an HTTP proxy, as an endpoint
    _dialer        Connect targets -> endpoints, under a dial policy
    _acl           the dial allow-list: parsed rules, canonical addresses
"""

from remotedialer.client._acl import DialACL, parse_rule
from remotedialer.client._client import TunnelClient, endpoint_for_url
from remotedialer.client._dialer import LocalDialer, allow_all, allow_patterns, deny_all
from remotedialer.client._proxyconnect import ProxyConnectEndpoint
from remotedialer.client._proxyrule import ProxyRule, ProxyURL

__all__ = [
    "TunnelClient",
    "endpoint_for_url",
    "ProxyConnectEndpoint",
    "ProxyRule",
    "ProxyURL",
    "LocalDialer",
    "allow_all",
    "allow_patterns",
    "deny_all",
    "DialACL",
    "parse_rule",
]

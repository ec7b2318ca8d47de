"""
TLS to the front door's https targets: L{InsecureTLSPolicy}
(C{--target-insecure}) for targets with self-signed certificates.  By
default targets are verified by twisted.web's BrowserLikePolicyForHTTPS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = ["InsecureTLSPolicy"]


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """A client TLS connection that checks no certificate (SNI still sent for DNS names)."""

    def __init__(self, context: SSL.Context, hostname: bytes) -> None:
        self._context = context
        text = hostname.decode("ascii", "replace")
        self._server_name = None if isIPAddress(text) or isIPv6Address(text) else hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class InsecureTLSPolicy:
    """
    https without verification (C{--target-insecure}): for targets with
    self-signed certificates, such as a fresh cluster's API server.  The
    traffic is encrypted, but anyone on the path can impersonate the target.
    """

    def __init__(self) -> None:
        self._context = CertificateOptions(verify=False).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> _UnverifiedCreator:
        return _UnverifiedCreator(self._context, hostname)

"""A guard for user-supplied base URLs (OpenAI-compatible endpoints), against SSRF.

The worker calls whatever base URL a team saved, from inside our network. Without a guard a
URL like ``http://169.254.169.254/latest/meta-data/`` would make the worker read the cloud's
instance credentials, and ``http://10.0.0.5:6379/`` would let a team poke internal services.

Rules (every address the host name resolves to must pass, so a name that resolves to both a
public and a metadata address is refused):

- only ``http`` and ``https``; no user:password in the URL (keys go in the credential);
- never: link-local (169.254/16, fe80::/10), cloud metadata names and addresses, multicast,
  unspecified (0.0.0.0, ::), broadcast and reserved ranges;
- loopback (127/8, ::1) and private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)
  only when ``allow_private=True`` (an owner's explicit choice for self-hosted vLLM/Ollama);
- single-label host names (``http://vllm:8000``, a docker-compose service; ``localhost``) only
  when ``allow_private=True``: public DNS has no such names, so they always name something
  inside our network. Allowed, they are resolved like any name and their addresses judged by
  the rules above.

The check resolves the name at the time it is called. The providers call it when they build a
client, and their HTTP client checks every request again before it connects (same origin as the
base URL, addresses re-resolved now and then; see worker.teachers.egress), so neither a redirect
nor a URL in a provider's answer can take the worker, or the key, anywhere else. A DNS answer
that changes between the check and the connection (rebinding) is not covered.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

# Names that are metadata services on the big clouds, whatever they resolve to.
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
# Metadata addresses that are not link-local (the link-local ones are refused as a range).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wireserver
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
_ASK_OWNER = (
    "an owner must allow private network addresses for this credential "
    "to use a self-hosted endpoint"
)


class UnsafeURLError(ValueError):
    """The base URL is refused; the message says why and what would make it acceptable.

    ``code`` says which rule refused it, as data: "empty", "invalid", "scheme", "userinfo",
    "no_host", "metadata", "single_label", "unresolvable" or "address"."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_base_url(
    url: str, *, allow_private: bool = False, resolver: Resolver | None = None
) -> CheckedURL:
    """Return the parsed URL when it is safe to call; raise UnsafeURLError otherwise."""
    text = (url or "").strip()
    if not text:
        raise UnsafeURLError("base URL: it is empty", code="empty")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"base URL {text!r}: not a valid URL ({exc})", code="invalid") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(
            f"base URL {text!r}: only http and https are allowed, not {scheme or 'no scheme'!r}",
            code="scheme",
        )
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError(
            f"base URL {_redact(text)!r}: must not contain a user name or password; "
            "put the key in the credential",
            code="userinfo",
        )
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURLError(f"base URL {text!r}: it has no host name", code="no_host")
    if port is None:
        port = 443 if scheme == "https" else 80
    if host in METADATA_HOSTNAMES:
        raise UnsafeURLError(
            f"base URL {text!r}: {host} is a cloud metadata service", code="metadata"
        )

    literal = _parse_ip(host)
    if literal is None and "." not in host and not allow_private:
        what = (
            "is a loopback name"
            if host == "localhost"
            else "is a single-label host name (such as a docker-compose service), which only "
            "exists inside a private network"
        )
        raise UnsafeURLError(f"base URL {text!r}: {host} {what}; {_ASK_OWNER}", code="single_label")
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list((resolver or default_resolver)(host, port))
        except (OSError, UnicodeError) as exc:
            raise UnsafeURLError(
                f"base URL {text!r}: the host {host} does not resolve", code="unresolvable"
            ) from exc
        if not addresses:
            raise UnsafeURLError(
                f"base URL {text!r}: the host {host} does not resolve", code="unresolvable"
            )

    for address in addresses:
        reason = _refusal(address, allow_private=allow_private)
        if reason:
            where = host if literal is not None else f"{host} resolves to {address}, which"
            raise UnsafeURLError(f"base URL {text!r}: {where} {reason}", code="address")
    return CheckedURL(text, scheme, host, port, tuple(addresses))


def _parse_ip(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip("[]").split("%")[0])
    except ValueError:
        return None
    return address


def _refusal(address_text: str, *, allow_private: bool) -> str:
    """Why an address is refused ('' when it is fine). ``address_text`` may carry a %zone."""
    address = _parse_ip(address_text)
    if address is None:
        return "is not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:169.254.169.254 and 64:ff9b::a9fe:a9fe reach IPv4 hosts: judge the IPv4 one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _refusal(str(embedded), allow_private=allow_private)
    if address in METADATA_ADDRESSES:
        return "is a cloud metadata address"
    if address.is_link_local:
        return "is a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "is a multicast address"
    if address.is_unspecified:
        return "is the unspecified address"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        return "is the broadcast address"
    if address.is_loopback:  # before "reserved": ::1 sits inside the reserved ::/8
        if allow_private:
            return ""
        return f"is a loopback address; {_ASK_OWNER}"
    if address.is_reserved:
        return "is in a reserved range"
    private = address.is_private or (
        isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE
    )
    if private:
        if allow_private:
            return ""
        return f"is a private network address; {_ASK_OWNER}"
    if not address.is_global:
        return "is not a public address"
    return ""


def _redact(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=f"***@{netloc}").geturl()

"""The SSRF guard for custom base URLs. Names are resolved by a stand-in resolver so the tests
do not depend on DNS."""

from __future__ import annotations

import pytest

from worker.ssrf import UnsafeURLError, check_base_url

DNS = {
    "api.together.xyz": ["104.18.10.10"],
    "vllm.lan": ["10.1.2.3"],
    "rebind.example": ["93.184.216.34", "169.254.169.254"],
    "v6only.example": ["2606:4700::6810:85e5"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "vllm": ["172.18.0.5"],  # a docker-compose service name
    "ollama": ["fd12:3456::7"],
    "sneaky": ["169.254.169.254"],
}


def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("Name or service not known")
    return DNS[host]


def check(url: str, **kwargs):  # type: ignore[no-untyped-def]
    return check_base_url(url, resolver=resolver, **kwargs)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.together.xyz/v1",
        "http://api.together.xyz:8080/v1",
        "https://v6only.example/v1",
        "https://93.184.216.34/v1",
    ],
)
def test_public_endpoints_pass(url):
    checked = check(url)
    assert checked.scheme in ("http", "https") and checked.addresses


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fe80::1]/v1", "link-local"),
        ("http://169.254.10.10/v1", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://100.100.100.200/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/latest", "metadata"),
        ("http://224.0.0.1/v1", "multicast"),
        ("http://[ff02::1]/v1", "multicast"),
        ("http://0.0.0.0:8000/v1", "unspecified"),
        ("http://[::]:8000/v1", "unspecified"),
        ("http://240.0.0.1/v1", "reserved"),
        ("http://rebind.example/v1", "169.254.169.254"),
        ("http://mapped.example/v1", "metadata"),
        ("http://[::ffff:169.254.169.254]/v1", "metadata"),
    ],
)
def test_dangerous_addresses_are_refused_even_when_private_is_allowed(url, reason):
    with pytest.raises(UnsafeURLError, match=reason):
        check(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/v1", "loopback"),
        ("http://localhost:11434/v1", "loopback"),
        ("http://[::1]:8000/v1", "loopback"),
        ("http://10.0.0.5:8000/v1", "private"),
        ("http://192.168.1.20/v1", "private"),
        ("http://172.16.0.1/v1", "private"),
        ("http://100.64.0.1/v1", "private"),
        ("http://vllm.lan:8000/v1", "private"),
    ],
)
def test_loopback_and_private_need_an_owners_permission(url, reason):
    DNS["localhost"] = ["127.0.0.1", "::1"]
    with pytest.raises(UnsafeURLError, match=reason) as caught:
        check(url)
    assert "an owner must allow private network addresses" in str(caught.value)
    assert check(url, allow_private=True).addresses


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://api.together.xyz/v1", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("api.together.xyz/v1", "only http and https"),
        ("https://user:secret@api.together.xyz/v1", "user name or password"),
        ("https:///v1", "no host"),
        ("", "empty"),
        ("https://no-such-host.invalid/v1", "does not resolve"),
        ("http://api.together.xyz:99999/v1", "not a valid URL"),
    ],
)
def test_malformed_or_unsupported_urls_are_refused_with_a_reason(url, reason):
    with pytest.raises(UnsafeURLError, match=reason):
        check(url, allow_private=True)


def test_credentials_in_the_url_are_not_repeated_in_the_message():
    with pytest.raises(UnsafeURLError) as caught:
        check("https://user:hunter2@api.together.xyz/v1")
    assert "hunter2" not in str(caught.value)


def test_real_resolver_handles_a_literal_loopback_address():
    # No stand-in resolver: literal IPs never touch DNS.
    assert check_base_url("http://127.0.0.1:9/v1", allow_private=True).addresses == ("127.0.0.1",)
    with pytest.raises(UnsafeURLError, match="loopback"):
        check_base_url("http://127.0.0.1:9/v1")


@pytest.mark.parametrize("url", ["http://vllm:8000/v1", "http://ollama:11434/v1"])
def test_single_label_hosts_are_accepted_when_private_networks_are_allowed(url):
    checked = check(url, allow_private=True)
    assert checked.host in ("vllm", "ollama")
    assert checked.addresses == tuple(DNS[checked.host])


@pytest.mark.parametrize("url", ["http://vllm:8000/v1", "http://gpu-box:8000/v1"])
def test_single_label_hosts_are_refused_without_private_networks_whether_or_not_they_resolve(url):
    # gpu-box does not resolve here; the web server must still refuse it with the real reason.
    with pytest.raises(UnsafeURLError, match="single-label host name") as caught:
        check(url)
    assert "an owner must allow private network addresses" in str(caught.value)
    assert caught.value.code == "single_label"


def test_single_label_hosts_still_meet_the_address_rules():
    with pytest.raises(UnsafeURLError, match="cloud metadata address") as caught:
        check("http://sneaky:8000/v1", allow_private=True)
    assert caught.value.code == "address"
    with pytest.raises(UnsafeURLError, match="does not resolve") as caught:
        check("http://gpu-box:8000/v1", allow_private=True)
    assert caught.value.code == "unresolvable"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("", "empty"),
        ("ftp://api.together.xyz/v1", "scheme"),
        ("https://user:pw@api.together.xyz/v1", "userinfo"),
        ("http://metadata.google.internal/", "metadata"),
        ("http://10.0.0.5/v1", "address"),
        ("https://no-such-host.invalid/v1", "unresolvable"),
    ],
)
def test_the_refusing_rule_is_carried_as_data(url, code):
    with pytest.raises(UnsafeURLError) as caught:
        check(url)
    assert caught.value.code == code

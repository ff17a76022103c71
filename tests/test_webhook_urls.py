"""The webhook URL rules (SSRF), every notation of a forbidden host, unit level."""

from __future__ import annotations

import ipaddress

import pytest

from relay.webhooks.urls import UrlRefused, check_webhook_url, is_forbidden_address, parse_ipv4

# Every notation of a host a webhook must not reach (code 7 in emailgateway.addwebhook).
FORBIDDEN = [
    # localhost names: any case, trailing dot, subdomains of localhost
    "http://localhost/hook",
    "http://LOCALHOST/hook",
    "http://LocalHost./hook",
    "http://localhost../hook",
    "https://api.localhost/hook",
    "http://localhost.localdomain/",
    "http://ip6-localhost/",
    # *.local and friends
    "http://printer.local/",
    "http://PRINTER.LOCAL./",
    "http://a.b.local/x",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://host.localdomain/",
    "http://intranet/",  # single label: resolved through search domains
    # IPv4 loopback in every notation
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0177.1/",
    "http://017700000001/",
    "http://0x7f.1/",
    "http://0x7F.0.0.1/",
    "http://0x7f000001/",
    "http://127.000.000.001/",
    "http://127.255.255.254/",
    "http://%31%32%37.0.0.1/",
    "http://%31%32%37%2e%30%2e%30%2e%31/",
    "http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/",  # fullwidth digits and dot
    "http://%6c%6f%63%61%6c%68%6f%73%74/",  # "localhost" percent-encoded
    # userinfo tricks: the host is after the last @
    "http://a@127.0.0.1/",
    "http://user:pass@127.0.0.1/",
    "http://example.com@127.0.0.1/",
    "http://a@b@localhost/",
    # private, link-local, CGNAT, unspecified, multicast, reserved
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://192.168.1.1:3000/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://0.0.0.0/",
    "http://0/",
    "http://0.1.2.3/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    # IPv6: loopback, unspecified, link-local, unique-local, mapped, compatible, embedded
    "http://[::1]/",
    "http://[::1]:8080/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[0000:0000:0000:0000:0000:0000:0000:0001]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::FFFF:7F00:0001]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:8.8.8.8]/",  # mapped addresses are refused whatever they embed
    "http://[::127.0.0.1]/",
    "http://[::7f00:1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[FEBF::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456:789a::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:c0a8:101::1]/",  # 6to4 of 192.168.1.1
    "http://[2001:db8::1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
]

# Not a valid http(s) URL (code 6).
INVALID = [
    "ftp://example.com/hook",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "gopher://example.com/",
    "example.com/hook",
    "//example.com/hook",
    "http://",
    "http:///hook",
    "https://:443/",
    "http://exa mple.com/",
    "http://example.com/a b",
    "http://example.com\\@127.0.0.1/",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com:port/",
    "http://[::1/",
    "http://[not-an-ip]/",
    "http://::1/",
    "http://999.0.0.1/",
    "http://1.2.3.4.5/",
    "http://0x100000000/",
    "http://4294967296/",
    "http://1.2.3.08/",  # all digits: meant as IPv4, but 08 is not octal
    "http://0128.0.0.1/",
    "http://a..b.com/",
    "http://-a.example.com/",
    "http://exa<mple.com/",
    "http://%2e%2e/",
    "http://%zz.example.com/",
    "http://%2525.example.com/",
    "http://example.com/\x00",
    "http://" + "a" * 64 + ".com/",
    "https://example.com/" + "x" * 2100,
]

ALLOWED = [
    "https://example.com/webhooks/email-events",
    "http://example.com:8080/x?y=1#z",
    "HTTPS://Example.COM/Hook",
    "http://127.0.0.1@example.com/",  # userinfo is not the host
    "https://hooks.example.co.uk./path",
    "http://8.8.8.8/",
    "http://1.1.1.1:8443/",
    "http://[2606:4700:4700::1111]/",
    "http://m\u00fcnchen.example/",
    "http://xn--mnchen-3ya.example/",
    "http://under_score.example.com/",
    "http://127.0.0.1.nip.io/",  # a DNS name: judged at delivery, by the address it resolves to
]


@pytest.mark.parametrize("url", FORBIDDEN)
def test_forbidden_hosts(url: str) -> None:
    with pytest.raises(UrlRefused) as err:
        check_webhook_url(url)
    assert err.value.forbidden, err.value.reason


@pytest.mark.parametrize("url", INVALID)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(UrlRefused) as err:
        check_webhook_url(url)
    assert not err.value.forbidden, err.value.reason


@pytest.mark.parametrize("url", ALLOWED)
def test_allowed_urls(url: str) -> None:
    assert check_webhook_url(url) == url.strip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0x", "0.0.0.0"),
        ("1.2.3.4", "1.2.3.4"),
    ],
)
def test_ipv4_notations(text: str, expected: str) -> None:
    assert parse_ipv4(text) == ipaddress.IPv4Address(expected)


def test_names_are_not_ipv4() -> None:
    assert parse_ipv4("example.com") is None
    assert parse_ipv4("1.2.3.example") is None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "fe80::1", "::ffff:192.168.0.1", "100.64.1.1"]
)
def test_forbidden_address_for_delivery_time_checks(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))

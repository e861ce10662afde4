"""`client_address`: what the server's per-client limits count as one client."""

from __future__ import annotations

from qwenguard.core.server.turns import client_address


def key(host: str) -> str:
    return client_address({"client": (host, 40000)})


def test_one_host_on_a_dual_stack_socket_is_one_client():
    """The attack: on a listener bound to ``::`` one host that connects over IPv4 (seen as
    ``::ffff:127.0.0.1``) and over IPv6 counted as two clients, each with its own share of the slots."""
    assert key("::ffff:127.0.0.1") == key("127.0.0.1") == "127.0.0.1"


def test_an_ipv6_host_cannot_become_many_clients_within_its_network():
    """The attack: an IPv6 host is given a /64; each of its 2^64 addresses counted as a client of its own."""
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::1") == "::/64"


def test_other_peers_are_kept_as_they_are():
    assert key("10.0.0.7") == "10.0.0.7" and key("10.0.0.8") != key("10.0.0.7")
    assert key("testclient") == "testclient"
    assert client_address({}) == "unknown"

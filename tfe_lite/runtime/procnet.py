"""This machine's TCP sockets as Linux lists them in ``/proc/net/tcp`` and ``/proc/net/tcp6``.

Each line gives a socket's local and remote ``ADDR:PORT`` (hex; the address in little-endian 32-bit words),
its state and inode. Elsewhere than Linux, or without ``/proc``, the tables are empty.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Iterator, NamedTuple

LISTEN = "0A"  # TCP_LISTEN


class Socket(NamedTuple):
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    inode: str


def endpoint(hex_address: str) -> tuple[str, int]:
    """An ``ADDR:PORT`` entry as (IP, port); an IPv4-mapped IPv6 address as its IPv4 form."""
    addr, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def tcp_sockets() -> Iterator[Socket]:
    """Every TCP socket of this machine (IPv4 and IPv6 tables)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9:
                yield Socket(endpoint(fields[1]), endpoint(fields[2]), fields[3], fields[9])

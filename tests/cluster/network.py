"""The wires of a multi-host test: one bridge in the root namespace, and a network namespace
per host plugged into it by a veth pair.

The root namespace is the database host (the bridge's address, `.1`); every other host is a
namespace whose only interface besides loopback is its end of the pair, so it reaches the
others through its link alone, and a link taken down is a real partition: the host's packets
go nowhere, its connections hang as they would behind a dead switch port.

Addresses are one /24 of 198.18.0.0/15 (RFC 2544, set aside for network tests) that no
interface here uses yet; names carry a random suffix, so two runs on one machine do not
collide. Everything made is removed by `Network.remove`, which `network()` calls however the
test ends. All of it needs root (`ip netns`, `ip link`, `tc`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
"""Where every address a test gives out lies; nothing is ever sent outside it."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip args...`; raises with its error output when it fails and `check` is set."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def tc(*args: str) -> subprocess.CompletedProcess[str]:
    """`tc args...`, run to its end; the caller reads its exit code."""
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30, check=False)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces and veth pairs, or None when it can:
    one namespace with one veth pair is made and removed to find out."""
    name = f"spool-probe-{secrets.token_hex(3)}"
    try:
        made = ip("netns", "add", name, check=False)
    except OSError as exc:
        return f"cannot run `ip`: {exc}"
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    try:
        veth = f"spp{secrets.token_hex(3)}"
        paired = ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name,
                    check=False)  # fmt: skip
        if paired.returncode != 0:
            return f"cannot make a veth pair: {paired.stderr.strip()}"
        return None
    finally:
        ip("netns", "del", name, check=False)  # takes the pair with it


def _qdisc_unavailable(*spec: str) -> str | None:
    """Why the queueing discipline `spec` cannot be set on an interface here, or None."""
    name = f"spool-probe-{secrets.token_hex(3)}"
    if ip("netns", "add", name, check=False).returncode != 0:
        return "cannot make a network namespace"
    try:
        ip("-n", name, "link", "set", "lo", "up")
        added = tc("-n", name, "qdisc", "add", "dev", "lo", "root", *spec)
        return None if added.returncode == 0 else f"tc {spec[0]}: {added.stderr.strip()}"
    finally:
        ip("netns", "del", name, check=False)


def netem_unavailable() -> str | None:
    """Why `tc netem` (delay, loss) cannot be used here, or None when it can."""
    return _qdisc_unavailable("netem", "delay", "1ms")


_TBF = ("tbf", "burst", "16kbit", "latency", "200ms")
"""A token bucket (`Link.throttle`): a burst of two packets, and at most 200 ms of queue, so
the host's other traffic (its heartbeats) waits behind a bulk transfer no longer than that."""


def throttle_unavailable() -> str | None:
    """Why `tc tbf` (a rate limit, `Link.throttle`) cannot be used here, or None when it can."""
    return _qdisc_unavailable(*_TBF, "rate", "1mbit")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the test range that no address in the root namespace lies in."""
    used = [
        ipaddress.ip_interface(line.split()[3]).network
        for line in ip("-o", "-4", "addr", "show").stdout.splitlines()
    ]
    subnets = list(TEST_RANGE.subnets(new_prefix=24))
    random.shuffle(subnets)
    for subnet in subnets:
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError("every /24 of 198.18.0.0/15 is in use here")


@dataclass
class Link:
    """A host's namespace and its veth pair: `eth0` inside, `veth` on the bridge."""

    namespace: str
    veth: str
    address: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program inside the host."""
        return ("ip", "netns", "exec", self.namespace)

    def cut(self) -> None:
        """Take the link down at the bridge's end: the host hears nothing and is not heard,
        yet keeps its address and its sockets, as behind a dead switch port."""
        ip("link", "set", self.veth, "down")

    def mend(self) -> None:
        """Bring the link back up."""
        ip("link", "set", self.veth, "up")

    def slow(self, delay_ms: float, loss_percent: float = 0.0) -> None:
        """Delay (and drop `loss_percent` of) packets both ways with `tc netem`; raises when
        the kernel has no netem (`netem_unavailable` says so first)."""
        spec = ["netem", "delay", f"{delay_ms}ms", "loss", f"{loss_percent}%"]
        for where in (("-n", self.namespace, "qdisc", "replace", "dev", "eth0"),
                      ("qdisc", "replace", "dev", self.veth)):  # fmt: skip
            done = tc(*where, "root", *spec)
            if done.returncode != 0:
                raise RuntimeError(f"tc {' '.join(where)}: {done.stderr.strip()}")

    def throttle(self, kbit: int) -> None:
        """Limit what the host sends (its uploads) to `kbit` kilobits a second with `tc tbf`;
        raises when the kernel has no tbf (`throttle_unavailable` says so first). `unslow`
        removes it."""
        where = ("-n", self.namespace, "qdisc", "replace", "dev", "eth0", "root")
        done = tc(*where, *_TBF, "rate", f"{kbit}kbit")
        if done.returncode != 0:
            raise RuntimeError(f"tc {' '.join(where)}: {done.stderr.strip()}")

    def unslow(self) -> None:
        """Remove what `slow` or `throttle` added."""
        tc("-n", self.namespace, "qdisc", "del", "dev", "eth0", "root")
        tc("qdisc", "del", "dev", self.veth, "root")

    def pids(self) -> list[int]:
        """Every process running in the host's namespace."""
        listed = ip("netns", "pids", self.namespace, check=False).stdout.split()
        return [int(p) for p in listed]


@dataclass
class Network:
    """The bridge (the database host's side, at `address`) and the links plugged into it."""

    suffix: str
    subnet: ipaddress.IPv4Network
    bridge: str
    links: dict[str, Link] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The database host's address: the bridge's, in the root namespace."""
        return str(self.subnet[1])

    def add(self, name: str) -> Link:
        """A host `name`: a namespace with loopback up and one link to the bridge."""
        index = len(self.links)
        link = Link(
            namespace=f"spool-{self.suffix}-{name}",
            veth=f"sp{self.suffix}-{index}",
            address=str(self.subnet[2 + index]),
        )
        self.links[name] = link
        ip("netns", "add", link.namespace)
        ip("link", "add", link.veth, "type", "veth", "peer", "name", "eth0",
           "netns", link.namespace)  # fmt: skip
        ip("link", "set", link.veth, "master", self.bridge, "up")
        inside = ("-n", link.namespace)
        ip(*inside, "addr", "add", f"{link.address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")
        return link

    def remove(self) -> None:
        """Delete every namespace (its veth pair goes with it) and the bridge. The caller has
        ended the processes in them: a namespace with processes left lives on unnamed."""
        for link in self.links.values():
            ip("netns", "del", link.namespace, check=False)
        ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A bridge on a free /24 of the test range, removed with every host on it at the end."""
    suffix = secrets.token_hex(3)
    subnet = _free_subnet()
    made = Network(suffix=suffix, subnet=subnet, bridge=f"spb{suffix}")
    try:
        ip("link", "add", made.bridge, "type", "bridge")
        ip("addr", "add", f"{made.address}/{subnet.prefixlen}", "dev", made.bridge)
        ip("link", "set", made.bridge, "up")
        yield made
    finally:
        made.remove()

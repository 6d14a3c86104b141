"""The fault suite's private network: five network namespaces on a test
range (198.18.0.0/15, RFC 2544's benchmarking range), two emulated links,
and its removal.

    dgf-cloud 198.18.1.100 ── [link "front": linkemu] ──┬── dgf-gwa 198.18.1.11 (+ VIP 198.18.1.10)
                                                       └── dgf-gwb 198.18.1.12
    dgf-gwa 198.18.2.11 ─┬── [link "back": linkemu] ── dgf-pacs 198.18.2.21, 198.18.2.22
    dgf-gwb 198.18.2.12 ─┘

The bridges and the emulators live in a sixth namespace, dgf-net, so that
nothing is created in the host's own namespace: every interface is made
inside a dgf-* namespace, and deleting the namespaces removes it all. Every
name starts with "dgf" (this suite's tag).
"""

import json
import os
import socket
import subprocess
import sys
import time

PREFIX = "dgf"
NET = "dgf-net"
CLOUD = "dgf-cloud"
GWA = "dgf-gwa"
GWB = "dgf-gwb"
PACS = "dgf-pacs"
HOSTS = [CLOUD, GWA, GWB, PACS]
NAMESPACES = [NET] + HOSTS

CLOUD_IP = "198.18.1.100"
GW_FRONT = {GWA: "198.18.1.11", GWB: "198.18.1.12"}
GW_BACK = {GWA: "198.18.2.11", GWB: "198.18.2.12"}
VIP = "198.18.1.10"
PACS_IPS = ["198.18.2.21", "198.18.2.22"]
# Interface names inside the gateway namespaces (what keepalived's
# "interface" names); unique per namespace, prefixed all the same.
FRONT_IF = "dgf-f0"
BACK_IF = "dgf-k0"


def sh(*args, check=True, ns=None, capture=False, timeout=30):
    cmd = list(args)
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout if capture else r


def ip(*args, ns=None, check=True):
    base = ["ip"] + (["-n", ns] if ns else [])
    return sh(*(base + list(args)), check=check, capture=True)


def existing_namespaces():
    out = sh("ip", "netns", "list", capture=True)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns):
    out = sh("ip", "netns", "pids", ns, check=False, capture=True)
    return [int(p) for p in out.split() if p.strip().isdigit()]


def teardown():
    """Ends every process in our namespaces (all of them were started by
    this suite: nothing else enters a dgf-* namespace) and deletes the
    namespaces, which removes their interfaces, bridges and taps."""
    ours = [n for n in existing_namespaces() if n in NAMESPACES]
    for sig in (15, 9):
        alive = []
        for ns in ours:
            for pid in pids_in(ns):
                try:
                    os.kill(pid, sig)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
        if not alive:
            break
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in alive):
            time.sleep(0.05)
    for ns in ours:
        sh("ip", "netns", "del", ns, check=False)


class Emulator:
    """One linkemu process between two taps, and its control socket."""

    def __init__(self, name, tap_a, tap_b, bridge_a, bridge_b, workdir, seed):
        self.name = name
        self.control = os.path.join(workdir, f"linkemu-{name}.sock")
        self.log = open(os.path.join(workdir, f"linkemu-{name}.log"), "w")
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", NET, sys.executable, os.path.join(here, "linkemu.py"),
             "--tap-a", tap_a, "--tap-b", tap_b, "--control", self.control, "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"linkemu {name} did not start (see {self.log.name})")
        self.seed = json.loads(line)["seed"]
        for tap, bridge in ((tap_a, bridge_a), (tap_b, bridge_b)):
            ip("link", "set", tap, "master", bridge, "up", ns=NET)
        self._client_path = self.control + ".client"

    def _ask(self, msg):
        try:
            os.unlink(self._client_path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind(self._client_path)
            s.settimeout(5)
            s.sendto(json.dumps(msg).encode(), self.control)
            return json.loads(s.recv(65536))
        finally:
            s.close()

    def set(self, **cfg):
        """loss, delay_ms, jitter_ms, reorder, dup, blackhole, partition."""
        self._ask(cfg)

    def clean(self):
        self.set(loss=0, delay_ms=0, jitter_ms=0, reorder=0, dup=0, blackhole=[], partition=False)

    def stats(self):
        return self._ask({"stats": True})


def veth(ns, name, bridge, peer, addrs):
    ip("link", "add", name, "type", "veth", "peer", "name", peer, "netns", NET, ns=ns)
    ip("link", "set", peer, "master", bridge, "up", ns=NET)
    for a in addrs:
        ip("addr", "add", f"{a}/24", "dev", name, ns=ns)
    ip("link", "set", name, "up", ns=ns)


def build(workdir, seed):
    """Creates the namespaces, bridges, links and emulators; returns the two
    emulators {"front": ..., "back": ...}."""
    teardown()  # a previous run that was killed before its trap
    for ns in NAMESPACES:
        sh("ip", "netns", "add", ns)
        ip("link", "set", "lo", "up", ns=ns)
    for br in ("dgf-bc", "dgf-bf", "dgf-bb", "dgf-bp"):
        ip("link", "add", br, "type", "bridge", "forward_delay", "0", ns=NET)
        # No STP, no multicast snooping: VRRP adverts are multicast or
        # unicast, and must reach every port at once.
        ip("link", "set", br, "type", "bridge", "stp_state", "0", "mcast_snooping", "0", ns=NET)
        ip("link", "set", br, "up", ns=NET)
    veth(CLOUD, "dgf-c0", "dgf-bc", "dgf-c0p", [CLOUD_IP])
    for gw, tag in ((GWA, "a"), (GWB, "b")):
        veth(gw, FRONT_IF, "dgf-bf", f"dgf-{tag}0p", [GW_FRONT[gw]])
        veth(gw, BACK_IF, "dgf-bb", f"dgf-{tag}1p", [GW_BACK[gw]])
    veth(PACS, "dgf-p0", "dgf-bp", "dgf-p0p", PACS_IPS)
    emulators = {
        "front": Emulator("front", "dgf-t1c", "dgf-t1f", "dgf-bc", "dgf-bf", workdir, seed),
        "back": Emulator("back", "dgf-t2b", "dgf-t2p", "dgf-bb", "dgf-bp", workdir, seed + 1),
    }
    return emulators


def tcp_retransmits(ns):
    """The namespace's TCP RetransSegs counter (/proc/net/snmp is per netns)."""
    out = sh("cat", "/proc/net/snmp", ns=ns, capture=True)
    lines = [l.split() for l in out.splitlines() if l.startswith("Tcp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RetransSegs")])


def has_address(ns, addr):
    return f" {addr}/" in ip("-4", "addr", "show", ns=ns)

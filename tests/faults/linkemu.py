#!/usr/bin/env python3
"""A userspace link emulator for the fault suite: Ethernet frames pass
between two TAP devices, and on the way they can be lost, delayed with
jitter, reordered, duplicated, black-holed (by IPv4 address) or cut
altogether (a partition).

Why userspace: the CI kernel has no netem (CONFIG_NET_SCH_NETEM unset), and a
TCP-level relay would hide loss (it re-sends for the peers). Working on
frames, the endpoints' own TCP stacks see the loss and reordering and
retransmit, as they would on a bad WAN or LAN.

Each TAP is attached to a bridge by the suite (tests/faults/net.py); the two
bridges are two halves of one Ethernet segment, so ARP and VRRP pass through
the emulator like everything else.

Control: a Unix datagram socket (--control). A JSON object sets the
impairment (keys absent keep their value):
  {"loss": 0.03, "delay_ms": 20, "jitter_ms": 10, "reorder": 0.02,
   "dup": 0.01, "blackhole": ["198.18.2.21"], "partition": false}
and {"stats": true} answers (to the sender's address) with the counters.
The impairment applies to both directions. The queue is bounded
(--queue-frames): beyond it frames are tail-dropped, as a router would.

Only the Python standard library; Linux only (TUNSETIFF).
"""

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def ipv4_addresses(frame):
    """(src, dst) of an IPv4 frame as dotted strings, else None."""
    if len(frame) < 34:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    if ethertype == ETH_P_8021Q and len(frame) >= 38:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        offset = 18
    if ethertype != ETH_P_IP:
        return None
    src = socket.inet_ntoa(frame[offset + 12 : offset + 16])
    dst = socket.inet_ntoa(frame[offset + 16 : offset + 20])
    return src, dst


class Link:
    def __init__(self, fds, queue_frames, seed):
        self.fds = fds  # [a, b]; a frame read on fds[i] goes out on fds[1 - i]
        self.queue_frames = queue_frames
        self.rng = random.Random(seed)
        self.loss = 0.0
        self.delay = 0.0
        self.jitter = 0.0
        self.reorder = 0.0
        self.dup = 0.0
        self.blackhole = set()
        self.partition = False
        self.heap = []  # (due, seq, out_fd, frame)
        self.seq = 0
        self.stats = {
            "frames_in": 0,
            "frames_out": 0,
            "lost": 0,
            "duplicated": 0,
            "reordered": 0,
            "blackholed": 0,
            "partitioned": 0,
            "queue_full": 0,
        }

    def configure(self, cfg):
        if "loss" in cfg:
            self.loss = float(cfg["loss"])
        if "delay_ms" in cfg:
            self.delay = float(cfg["delay_ms"]) / 1000.0
        if "jitter_ms" in cfg:
            self.jitter = float(cfg["jitter_ms"]) / 1000.0
        if "reorder" in cfg:
            self.reorder = float(cfg["reorder"])
        if "dup" in cfg:
            self.dup = float(cfg["dup"])
        if "blackhole" in cfg:
            self.blackhole = set(cfg["blackhole"])
        if "partition" in cfg:
            self.partition = bool(cfg["partition"])

    def schedule(self, out_fd, frame, now):
        if len(self.heap) >= self.queue_frames:
            self.stats["queue_full"] += 1
            return
        delay = self.delay
        if self.jitter:
            delay = max(0.0, delay + self.rng.uniform(-self.jitter, self.jitter))
        if self.reorder and self.rng.random() < self.reorder:
            # Held back by one more base delay (at least 5 ms): frames sent
            # after it overtake it.
            delay += max(self.delay, 0.005)
            self.stats["reordered"] += 1
        self.seq += 1
        heapq.heappush(self.heap, (now + delay, self.seq, out_fd, frame))

    def frame_in(self, index, frame, now):
        self.stats["frames_in"] += 1
        if self.partition:
            self.stats["partitioned"] += 1
            return
        addrs = ipv4_addresses(frame)
        if addrs and self.blackhole and (addrs[0] in self.blackhole or addrs[1] in self.blackhole):
            self.stats["blackholed"] += 1
            return
        # ARP and other non-IP frames are never lost: the suite's faults
        # are about the transport, not about address resolution.
        if addrs and self.loss and self.rng.random() < self.loss:
            self.stats["lost"] += 1
            return
        out_fd = self.fds[1 - index]
        self.schedule(out_fd, frame, now)
        if addrs and self.dup and self.rng.random() < self.dup:
            self.stats["duplicated"] += 1
            self.schedule(out_fd, frame, now)

    def flush(self, now):
        while self.heap and self.heap[0][0] <= now:
            _, _, out_fd, frame = heapq.heappop(self.heap)
            try:
                os.write(out_fd, frame)
                self.stats["frames_out"] += 1
            except BlockingIOError:
                self.stats["queue_full"] += 1
            except OSError:
                # The other side is down (link not up yet): the frame is lost.
                self.stats["queue_full"] += 1

    def next_timeout(self, now):
        if not self.heap:
            return 1.0
        return max(0.0, self.heap[0][0] - now)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tap-a", required=True)
    p.add_argument("--tap-b", required=True)
    p.add_argument("--control", required=True, help="Unix datagram socket path")
    p.add_argument("--queue-frames", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    fds = [open_tap(args.tap_a), open_tap(args.tap_b)]
    link = Link(fds, args.queue_frames, seed)

    try:
        os.unlink(args.control)
    except FileNotFoundError:
        pass
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ctl.bind(args.control)
    ctl.setblocking(False)

    print(json.dumps({"ready": True, "seed": seed}), flush=True)
    while True:
        now = time.monotonic()
        link.flush(now)
        readable, _, _ = select.select(fds + [ctl], [], [], link.next_timeout(time.monotonic()))
        now = time.monotonic()
        for r in readable:
            if r is ctl:
                try:
                    data, sender = ctl.recvfrom(65536)
                except BlockingIOError:
                    continue
                msg = json.loads(data)
                if msg.get("stats"):
                    if sender:
                        ctl.sendto(json.dumps(link.stats).encode(), sender)
                else:
                    link.configure(msg)
                    if sender:
                        ctl.sendto(b'{"ok": true}', sender)
                continue
            index = fds.index(r)
            # Drain what is there, bounded per wake-up so that the other
            # direction and the timers are served too.
            for _ in range(64):
                try:
                    frame = os.read(r, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                link.frame_in(index, frame, now)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)

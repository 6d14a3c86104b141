#!/usr/bin/env python3
"""The fault suite (issue 24): two gateways as an HA pair on keepalived, a
cloud, a PACS, and a bad network between them (tests/faults/net.py,
linkemu.py). Each scenario is a test that can fail; the run ends with
"N passed, N failed" and exits non-zero on any failure. Run it through
scripts/fault-test.sh (root, CI=true); it always removes its namespaces.

Scenarios, in order (the pair's state carries from one to the next):
  lossy_cloud_link      loss/delay/jitter/reorder/duplication cloud <-> gateways
  lossy_pacs_link       the same between the gateways and the PACS
  black_holed_server    the first PACS server drops every packet
  frozen_scp            storescp stopped (SIGSTOP) mid-association
  partition_healed      the pair cut from the PACS for 10 s
  no_leaks              fds and RSS of both gateways back near their start
  ha_failover           kill -9 of the master's dicomgate, then fail back
  pacs_integrity        every file at the PACS is byte-identical to one sent
Figures are printed as "figure: ..." lines (docs/scaling.md, docs/operations.md
quote them).
"""

import argparse
from datetime import datetime
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import net  # noqa: E402
import world  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHIPPED_KEEPALIVED = os.path.join(ROOT, "deploy", "keepalived", "keepalived.conf")
# The impairment of the lossy-link scenarios: a bad WAN or a sick LAN.
LOSSY = dict(loss=0.03, delay_ms=25, jitter_ms=10, reorder=0.02, dup=0.01)
DEFAULT_CONNECT_S = 4.0


def figure(text):
    print(f"figure: {text}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Suite:
    def __init__(self, args):
        self.args = args
        self.work = args.workdir
        self.rng = random.Random(args.seed)
        self.em = None
        self.pacs = None
        self.gw = {}
        self.ka = {}
        self.baseline = {}
        self.sent = {}  # every object any scenario sent: uid -> path

    # --- the world ---------------------------------------------------------------

    def build(self):
        self.em = net.build(self.work, self.args.seed)
        print(f"linkemu seeds: front {self.em['front'].seed}, back {self.em['back'].seed}", flush=True)
        self.pacs = world.Pacs(self.work)
        state = os.path.join(self.work, "state")
        os.makedirs(state, exist_ok=True)
        # One certificate for both (docs/scaling.md): gw-a generates it on
        # its first start, gw-b finds it.
        for ns in (net.GWA, net.GWB):
            self.gw[ns] = world.Gateway(ns, self.args.binary, self.work, state)
            self.gw[ns].start()
        shipped = open(self.args.keepalived_conf).read()
        for ns in (net.GWA, net.GWB):
            self.ka[ns] = world.Keepalived(ns, world.adapt_keepalived(shipped, ns), self.work)
        # gw-a first: with equal start times the higher priority wins anyway,
        # but a nopreempt pair keeps whoever became master first.
        self.ka[net.GWA].start()
        world.wait_until("the VIP on gw-a", lambda: net.has_address(net.GWA, net.VIP), 20)
        self.ka[net.GWB].start()
        time.sleep(2)
        check(not net.has_address(net.GWB, net.VIP), "the VIP is on both gateways")
        # Warm both up (TLS, buffers) before the baseline.
        objs = self.objects("warm", 2, 20_000, 60_000)
        for host in (net.VIP, net.GW_FRONT[net.GWB]):
            ok, _, out, _, _ = world.storescu([p for p, _ in objs], host=host)
            check(ok, f"warm-up through {host} failed:\n{out}")
        time.sleep(1)
        for ns, g in self.gw.items():
            self.baseline[ns] = (g.fds(), g.rss_kib())
            figure(f"baseline {ns}: {g.fds()} fds, RSS {g.rss_kib()} KiB")

    def objects(self, tag, count, lo, hi):
        made = world.make_objects(os.path.join(self.work, "objects", tag), count, lo, hi, self.rng)
        for path, uid in made:
            self.sent[uid] = path
        return made

    def master(self):
        return self.gw[net.GWA] if net.has_address(net.GWA, net.VIP) else self.gw[net.GWB]

    def store_audit(self, gw):
        """The audit events of the store listener for the cloud's
        associations, in the order they were written."""
        return [ev for ev in gw.audit()
                if ev.get("listener") == "store" and str(ev.get("peer", "")).startswith(net.CLOUD_IP)]

    def audit_mark(self, gw):
        """Where the next association's audit line will be: a line is written
        as the association ends, possibly just after the SCU has exited, so
        let the previous one land first."""
        time.sleep(0.5)
        return len(self.store_audit(gw))

    def paired_audit(self, gw, mark, count):
        """The `count` audit lines written since `mark` (sequential
        associations: the k-th line is the k-th association's)."""
        deadline = time.time() + 5
        while len(self.store_audit(gw)) < mark + count and time.time() < deadline:
            time.sleep(0.1)
        events = self.store_audit(gw)[mark:]
        check(len(events) == count, f"{count} associations, {len(events)} audit lines: {events}")
        return events

    # --- scenarios ---------------------------------------------------------------------

    def lossy(self, link, label):
        em = self.em[link]
        gw = self.master()
        retrans_ns = net.CLOUD if link == "front" else gw.ns
        r0 = net.tcp_retransmits(retrans_ns)
        s0 = em.stats()
        em.set(**LOSSY)
        sent = {}
        results = []
        mark = self.audit_mark(gw)
        t_start = time.time()
        try:
            for i in range(self.args.lossy_associations):
                objs = self.objects(f"{label}{i}", 3, 50_000, 400_000)
                ok, n, out, started, ended = world.storescu([p for p, _ in objs], timeout=180)
                results.append((ok, n, out, started, ended, objs))
                for p, uid in objs:
                    sent[uid] = p
        finally:
            em.clean()
        elapsed = time.time() - t_start
        s1 = em.stats()
        retrans = net.tcp_retransmits(retrans_ns) - r0
        lost = s1["lost"] - s0["lost"]
        dup = s1["duplicated"] - s0["duplicated"]
        reordered = s1["reordered"] - s0["reordered"]
        frames = s1["frames_in"] - s0["frames_in"]
        check(lost > 0 and dup > 0 and reordered > 0, f"the link was not impaired: {s1}")
        check(retrans > 0, f"no TCP retransmission in {retrans_ns}: the loss did not reach TCP")

        received = self.pacs.received()
        # Never a stored object that differs from what was sent.
        for uid, path in received.items():
            if uid in sent:
                check(world.dataset_bytes(path) == world.dataset_bytes(sent[uid]),
                      f"{uid}: stored data set differs from the one sent")
        # One audit line per association; they ran one after the other, so
        # the k-th line is the k-th association's.
        events = self.paired_audit(gw, mark, len(results))
        ok_count = 0
        for (ok, n, out, started, ended, objs), ev in zip(results, events):
            if ok:
                ok_count += 1
                # Never a success for a missing object.
                for p, uid in objs:
                    check(uid in received, f"storescu reported success for {uid}, missing at the PACS")
                check(ev.get("end") == "released", f"a successful association not audited as released: {ev}")
            else:
                # Visible: the SCU failed, and the audit line has no clean end.
                check(ev.get("end") != "released" or ev.get("outcome") != "forwarded",
                      f"storescu failed but the audit line says clean: {ev}\n{out}")
        stored = sum(1 for uid in sent if uid in received)
        figure(f"{label}: {len(results)} associations ({ok_count} succeeded, {len(results) - ok_count} failed "
               f"visibly), {stored}/{len(sent)} objects stored, all byte-identical; link: {frames} frames, "
               f"{lost} lost, {dup} duplicated, {reordered} reordered; {retrans} TCP retransmissions in "
               f"{retrans_ns}; {elapsed:.1f} s")

    def test_lossy_cloud_link(self):
        self.lossy("front", "lossy-cloud")

    def test_lossy_pacs_link(self):
        self.lossy("back", "lossy-pacs")

    def test_black_holed_server(self):
        gw = self.master()
        other = self.gw[net.GWB] if gw is self.gw[net.GWA] else self.gw[net.GWA]
        first = f"{net.PACS_IPS[0]}:11112"
        second = f"{net.PACS_IPS[1]}:11112"
        objs = self.objects("bh", 5, 20_000, 40_000)
        mark = self.audit_mark(gw)
        self.em["back"].set(blackhole=[net.PACS_IPS[0]])
        t_hole = time.time()
        try:
            durations, runs = [], []
            for p, _ in objs:
                ok, _, out, started, ended = world.storescu([p])
                check(ok, f"an association failed with one server black-holed:\n{out}")
                durations.append(ended - started)
                runs.append((started, ended))
            for ev in self.paired_audit(gw, mark, len(runs)):
                check(ev.get("server") == second, f"not served by {second}: {ev}")
            figure("black_holed_server: association durations " + ", ".join(f"{d:.2f}s" for d in durations))
            check(all(d < DEFAULT_CONNECT_S * 0.5 for d in durations[1:]),
                  f"associations after the first still wait on the black hole: {durations}")
            st = gw.status()
            srv = next(s for s in st["backends"]["pacs"]["servers"] if s["server"] == first)
            check(srv["state"] == "down", f"/status does not show {first} down: {srv}")
            check(srv.get("last_failed_connect"), f"/status has no last_failed_connect: {srv}")
            up = gw.metric("dicomgate_backend_up", f'{{backend="pacs",server="{first}"}}')
            check(up == 0, f"dicomgate_backend_up for {first} is {up}")
            # The other gateway carries no traffic: its monitor alone marks the
            # server down, within fall x interval + timeout (35 s) plus slack.
            def other_down():
                st = other.status()
                return any(s["server"] == first and s["state"] == "down" for s in st["backends"]["pacs"]["servers"])
            world.wait_until(f"{other.ns}'s monitor marking {first} down", other_down, 45, step=0.5)
            figure(f"black_holed_server: the idle gateway's monitor marked it down after {time.time() - t_hole:.1f} s")
        finally:
            self.em["back"].clean()

    def test_frozen_scp(self):
        gw = self.master()
        dimse = 5
        gw.write_config(dimse=f"{dimse}s")
        gw.reload()
        try:
            objs = self.objects("frozen", 6, 300_000, 400_000)
            ok, _, out, _, _ = world.storescu([objs[0][0]])
            check(ok, f"warm-up before the freeze failed:\n{out}")
            time.sleep(0.5)
            fds0, rss0 = gw.fds(), gw.rss_kib()
            before = set(self.pacs.received())
            mark = self.audit_mark(gw)
            result = {}
            t = threading.Thread(target=lambda: result.update(r=world.storescu([p for p, _ in objs[1:]], dimse=60)))
            t.start()
            world.wait_until("the first object at the PACS", lambda: len(set(self.pacs.received()) - before) >= 1, 30,
                             step=0.01)
            scp = self.pacs.storescp
            scp.send_signal(signal.SIGSTOP)
            t_stop = time.time()
            try:
                t.join(dimse + 20)
                check(not t.is_alive(), "storescu did not end while the SCP was frozen")
            finally:
                scp.send_signal(signal.SIGCONT)
            ok, n, out, started, ended = result["r"]
            took = ended - t_stop
            check(not ok, f"storescu succeeded against a frozen SCP:\n{out}")
            check("abort" in out.lower(), f"storescu saw no abort:\n{out}")
            check(took <= dimse + 2.5, f"the client's abort came {took:.1f} s after the freeze (DIMSE timeout {dimse} s)")
            ev = self.paired_audit(gw, mark, 1)[0]
            check(ev.get("end") == "idle_timeout", f"audit does not say idle_timeout: {ev}")
            # The SCP's side: after SIGCONT it reads what the gateway sent
            # while it was stopped, the A-ABORT, and ends the association.
            world.wait_until("storescp to see the abort",
                             lambda: "Association Aborted" in self.pacs.log_text()[-4000:], 15)
            ok2, _, out2, _, _ = world.storescu([objs[0][0]])
            check(ok2, f"the next association after SIGCONT failed:\n{out2}")
            time.sleep(1)
            fds1, rss1 = gw.fds(), gw.rss_kib()
            check(fds1 <= fds0 + 2, f"fds {fds0} -> {fds1} after the frozen SCP")
            figure(f"frozen_scp: client aborted {took:.2f} s after the freeze (timeouts.dimse {dimse}s), "
                   f"audit end=idle_timeout, {n} of {len(objs) - 1} objects acknowledged before the freeze; "
                   f"fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
        finally:
            gw.write_config()
            gw.reload()

    def test_partition_healed(self):
        gw = self.master()
        objs = self.objects("part", 2, 20_000, 40_000)
        mark = self.audit_mark(gw)
        self.em["back"].set(partition=True)
        t_cut = time.time()
        try:
            ok, _, out, started, ended = world.storescu([objs[0][0]], timeout=60)
            check(not ok, "an association succeeded across the partition")
            check("Association Rejected" in out, f"no A-ASSOCIATE-RJ for the cloud during the partition:\n{out}")
            ev = self.paired_audit(gw, mark, 1)[0]
            check(ev.get("outcome") == "backend_unavailable", f"audit: {ev}")
            during = ended - started
            left = 10 - (time.time() - t_cut)
            if left > 0:
                time.sleep(left)
        finally:
            self.em["back"].set(partition=False)
        t_heal = time.time()
        ok, _, out, _, ended = world.storescu([objs[1][0]])
        check(ok, f"the first association after the partition healed failed:\n{out}")
        ok_mwl, out_mwl = world.findscu_worklist()
        check(ok_mwl, f"the worklist query after the partition healed failed:\n{out_mwl}")
        figure(f"partition_healed: during the cut the cloud got A-ASSOCIATE-RJ after {during:.1f} s "
               f"(outcome backend_unavailable); the first association after healing succeeded "
               f"{ended - t_heal:.2f} s after it, no restart")

    def test_pacs_integrity(self):
        """Across every scenario: each file at the PACS is an object that was
        sent, with the same data set bytes; aborted transfers left nothing."""
        received = self.pacs.received()
        for uid, path in received.items():
            check(uid in self.sent, f"{path}: an object nobody sent")
            check(world.dataset_bytes(path) == world.dataset_bytes(self.sent[uid]),
                  f"{path}: stored data set differs from the one sent")
        figure(f"pacs_integrity: {len(received)} files at the PACS, all byte-identical to the sent data sets")

    def test_no_leaks(self):
        time.sleep(2)
        for ns, g in self.gw.items():
            fds0, rss0 = self.baseline[ns]
            fds1, rss1 = g.fds(), g.rss_kib()
            figure(f"no_leaks {ns}: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
            check(fds1 <= fds0 + 2, f"{ns}: {fds1} fds after the faults, {fds0} at the start")
            # Allocator arenas keep some freed memory; a leak per association
            # would grow with the hundreds of associations above.
            check(rss1 <= rss0 + 16 * 1024, f"{ns}: RSS {rss1} KiB after the faults, {rss0} KiB at the start")

    def test_ha_failover(self):
        check(net.has_address(net.GWA, net.VIP), "gw-a should hold the VIP before the failover")
        obj = self.objects("ha", 1, 20_000, 20_000)[0][0]
        records = []
        stop = threading.Event()

        def loop():
            # One association every 200 ms (start to start), as the issue's
            # loop of ~5 associations/s; bounded by `stop` and by count.
            for _ in range(600):
                if stop.is_set():
                    return
                t0 = time.time()
                ok, _, out, started, ended = world.storescu([obj], timeout=30)
                records.append((started, ended, ok, out))
                rest = 0.2 - (time.time() - t0)
                if rest > 0:
                    time.sleep(rest)

        th = threading.Thread(target=loop)
        th.start()
        try:
            time.sleep(3)
            t_kill = time.time()
            self.gw[net.GWA].kill9()
            world.wait_until("the VIP on gw-b", lambda: net.has_address(net.GWB, net.VIP), 20, step=0.02)
            t_moved = time.time()
            time.sleep(4)
            # gw-a's daemon back (systemd would restart it): nopreempt keeps
            # the address on gw-b, so nothing moves and nothing fails.
            self.gw[net.GWA].start()
            time.sleep(4)
            check(net.has_address(net.GWB, net.VIP), "the VIP moved back by itself (preemption)")
            t_stop_ka = time.time()
            self.ka[net.GWB].stop()
            world.wait_until("the VIP back on gw-a", lambda: net.has_address(net.GWA, net.VIP), 20, step=0.02)
            t_back = time.time()
            time.sleep(4)
        finally:
            stop.set()
            th.join(60)
        kill = self.failover_figures(records, t_kill, "kill -9 of gw-a's dicomgate", t_moved)
        back = self.failover_figures(records, t_stop_ka, "keepalived stopped on gw-b (fail back)", t_back)
        before = [r for r in records if r[1] < t_kill]
        check(len(before) >= 5 and all(r[2] for r in before), "the loop was not healthy before the fault")
        for name, (gap, failed, in_flight, late) in (("failover", kill), ("fail back", back)):
            check(gap <= self.args.max_failover, f"{name}: {gap:.2f} s without service (bound {self.args.max_failover} s)")
            check(failed <= in_flight + self.args.extra_failures,
                  f"{name}: {failed} associations failed, {in_flight} in flight (allowed +{self.args.extra_failures})")
            check(late == 0, f"{name}: {late} associations failed after the address had moved")
        between = [r for r in records if t_moved + 3 < r[0] and r[1] < t_stop_ka]
        check(all(r[2] for r in between), "associations failed while gw-a's daemon came back")

    def failover_figures(self, records, t_fault, label, t_moved):
        ok_before = [r for r in records if r[2] and r[1] <= t_fault]
        last_ok = max(r[1] for r in ok_before)
        after = [r for r in records if r[2] and r[1] > t_fault]
        check(after, f"{label}: no successful association after the fault")
        next_ok = min(r[1] for r in after)
        window = [r for r in records if r[1] > t_fault and r[1] <= next_ok]
        failed = [r for r in window if not r[2]]
        in_flight = sum(1 for r in records if r[0] <= t_fault < r[1])
        late = sum(1 for r in records if not r[2] and t_moved + 0.5 < r[0] < t_moved + 4)
        gap = next_ok - last_ok
        figure(f"ha {label}: {gap:.2f} s from the last success to the next, {len(failed)} failed "
               f"({in_flight} in flight at the fault), address moved {t_moved - t_fault:.2f} s after the fault")
        if failed:
            print(f"  first failure output:\n{failed[0][3][-400:]}", flush=True)
        return gap, len(failed), in_flight, late


ORDER = ["lossy_cloud_link", "lossy_pacs_link", "black_holed_server", "frozen_scp", "partition_healed", "no_leaks",
         "ha_failover", "pacs_integrity"]


def main():
    p = argparse.ArgumentParser(description="dicomgate fault suite (issue 24)")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "dicomgate"))
    p.add_argument("--workdir", required=True)
    p.add_argument("--keepalived-conf", default=SHIPPED_KEEPALIVED,
                   help="the keepalived.conf to adapt (default: the shipped one)")
    p.add_argument("--only", action="append", choices=ORDER, help="run only these scenarios (repeatable)")
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(2), "big"))
    p.add_argument("--lossy-associations", type=int, default=8)
    p.add_argument("--max-failover", type=float, default=3.0, help="seconds without service allowed")
    p.add_argument("--extra-failures", type=int, default=1,
                   help="failed associations allowed beyond those in flight at the fault")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print(f"fault suite: binary {args.binary}, keepalived.conf {args.keepalived_conf}, seed {args.seed}", flush=True)

    def on_signal(signum, _frame):
        net.teardown()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    suite = Suite(args)
    passed, failed = 0, 0
    started = time.time()
    try:
        try:
            suite.build()
        except Exception:
            traceback.print_exc()
            print("fault suite: the test world could not be built")
            print(f"0 passed, {len(args.only or ORDER)} failed")
            return 1
        for name in args.only or ORDER:
            t0 = time.time()
            print(f"--- {name}", flush=True)
            try:
                getattr(suite, f"test_{name}")()
                passed += 1
                print(f"test {name} ... ok ({time.time() - t0:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported, the suite goes on
                failed += 1
                traceback.print_exc()
                print(f"test {name} ... FAILED ({time.time() - t0:.1f} s): {e}", flush=True)
    finally:
        for k in suite.ka.values():
            k.stop()
        for g in suite.gw.values():
            g.stop()
        net.teardown()
        left = [n for n in net.existing_namespaces() if n.startswith(net.PREFIX)]
        if left:
            print(f"fault suite: namespaces left behind: {left}")
            failed += 1
    print(f"fault suite took {time.time() - started:.0f} s; logs in {args.workdir}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

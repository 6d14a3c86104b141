#!/usr/bin/env python3
"""Turns a bench/run.sh work directory into RESULTS.md (stdout).

Every figure is the median over rounds with min–max; ratios are against
HAProxy's median in the same run. usage: report.py WORK_DIR
"""
import collections
import os
import statistics
import sys

PROXIES = ["haproxy", "nginx", "stunnel", "dicomgate-1t", "dicomgate-1t-bytes", "dicomgate",
           "haproxy-tuned", "dicomgate-1t-tuned", "dicomgate-1t-before"]
LABEL = {
    "haproxy": "HAProxy (nbthread 1)",
    "nginx": "nginx stream (1 worker)",
    "stunnel": "stunnel",
    "dicomgate-1t": "dicomgate, 1 worker, DICOM relay",
    "dicomgate-1t-bytes": "dicomgate, 1 worker, byte relay",
    "dicomgate": "dicomgate, default workers, DICOM relay",
    "haproxy-tuned": "HAProxy, glibc rep-movsb tunable",
    "dicomgate-1t-tuned": "dicomgate, 1 worker, DICOM relay, glibc rep-movsb tunable",
    "dicomgate-1t-before": "dicomgate before this change, 1 worker, DICOM relay",
    "direct": "no proxy (plain, client → sink)",
}
# metric -> (title, unit, lower is better)
METRICS = {
    "mb_per_s": ("MB/s", False),
    "cpu_s_per_gb": ("proxy CPU-s/GB", True),
    "per_s": ("assoc/s", False),
    "p50_ms": ("p50 ms", True),
    "p99_ms": ("p99 ms", True),
    "cpu_ms_per_assoc": ("proxy CPU-ms/assoc", True),
    "kib_per_conn": ("KiB/conn", True),
    "syscalls_per_mb": ("syscalls/MB", True),
}
BENCHES = [
    ("bulk-single", "Bulk C-STORE, single-frame US (storescu +tls → proxy → storescp --ignore)"),
    ("bulk-multi", "Bulk C-STORE, multi-frame US cine (storescu +tls → proxy → storescp --ignore)"),
    ("raw", "Raw data path: 1 MiB P-DATA-TF after a real A-ASSOCIATE (dgbench raw, TLS 1.3 → proxy → sink)"),
    ("echoscu-c1", "Associations, echoscu +tls, sequential (one process per association)"),
    ("echoscu-c8", "Associations, echoscu +tls, 8 concurrent"),
    ("inproc-c1", "Associations, in-process (TLS 1.3 handshake, A-ASSOCIATE, C-ECHO, A-RELEASE), sequential"),
    ("inproc-c8", "Associations, in-process, 8 concurrent"),
]


def load(work):
    data = collections.defaultdict(list)
    with open(os.path.join(work, "results.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            _, bench, proxy, metric, value = parts
            try:
                v = float(value)
            except ValueError:
                continue
            data[(bench, proxy, metric)].append(v)
    return data


def kv_file(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition(" ")
                out[k] = v
    return out


def fmt(v):
    if v != v:  # nan
        return "–"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(values):
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m)
    return "%s (%s–%s)" % (fmt(m), fmt(min(values)), fmt(max(values)))


def med(data, bench, proxy, metric):
    v = data.get((bench, proxy, metric))
    return statistics.median(v) if v else float("nan")


def ratio(data, bench, proxy, metric, base="haproxy"):
    a, b = med(data, bench, proxy, metric), med(data, bench, base, metric)
    if a != a or b != b or b == 0:
        return float("nan")
    return a / b


def openssl_rate(path):
    """AES-GCM throughput in bytes/s from `openssl speed -bytes 16384 -evp …`."""
    if not os.path.exists(path):
        return None
    last = [l for l in open(path).read().splitlines() if l.strip()]
    if not last:
        return None
    tok = last[-1].split()[-1]
    if tok.endswith("k"):
        return float(tok[:-1]) * 1000
    return None


def rsa_sign_per_s(path):
    if not os.path.exists(path):
        return None
    for line in open(path):
        parts = line.split()
        if line.startswith("rsa 2048") and len(parts) >= 7:
            return float(parts[5])
    return None


def main():
    work = sys.argv[1]
    data = load(work)
    machine = kv_file(os.path.join(work, "machine"))
    loads = kv_file(os.path.join(work, "load"))
    present = [p for p in PROXIES if any(k[1] == p for k in data)]
    out = []
    w = out.append

    # Issue 21's goals (the earlier rounds' were 0.75× raw, 0.8× bulk, 1.2× raw MB/s).
    targets = [
        ("raw CPU-s/GB", "raw", "cpu_s_per_gb", "≤ 0.45×", lambda r: r <= 0.45),
        ("bulk CPU-s/GB, single-frame", "bulk-single", "cpu_s_per_gb", "≤ 0.65×", lambda r: r <= 0.65),
        ("bulk CPU-s/GB, multi-frame", "bulk-multi", "cpu_s_per_gb", "≤ 0.65×", lambda r: r <= 0.65),
        ("CPU-ms per association (in-process, 8-way)", "inproc-c8", "cpu_ms_per_assoc", "≤ 0.8×", lambda r: r <= 0.8),
        ("CPU-ms per association (echoscu, 8-way)", "echoscu-c8", "cpu_ms_per_assoc", "≤ 0.8×", lambda r: r <= 0.8),
        ("raw MB/s", "raw", "mb_per_s", "≥ 1.6×", lambda r: r >= 1.6),
    ]
    idle_benches = sorted({k[0] for k in data if k[0].startswith("idle-")},
                          key=lambda b: (b.split("-")[1] != "tls", int(b.split("-")[2])))
    last_tls = [b for b in idle_benches if b.startswith("idle-tls-")]
    if last_tls:
        targets.insert(4, ("KiB per idle TLS connection (%s)" % last_tls[-1].split("-")[2], last_tls[-1],
                           "kib_per_conn", "≤ 0.7×", lambda r: r <= 0.7))

    w("# dicomgate benchmark results")
    w("")
    w("Same-run medians over %s rounds (min–max in brackets), ratios against HAProxy's median of the same run. "
      "Machine: %s × %s, kernel %s, %s. Load average before: %s; after: %s. Method: bench/README.md; rerun with "
      "`bench/run.sh`." % (machine.get("rounds", "?"), machine.get("nproc", "?"), machine.get("cpu", "?"),
                           machine.get("kernel", "?"), machine.get("date", "?"),
                           loads.get("load_before", "?"), loads.get("load_after", "?")))
    w("")
    w("## Table for the README")
    w("")
    w("| per one worker thread, RSA-2048, loopback | HAProxy | nginx | stunnel | dicomgate | dicomgate / HAProxy | target |")
    w("|---|---|---|---|---|---|---|")
    for title, bench, metric, target, ok in targets:
        r = ratio(data, bench, "dicomgate-1t", metric)
        verdict = "–" if r != r else ("met" if ok(r) else "missed")
        unit = METRICS[metric][0]
        w("| %s (%s) | %s | %s | %s | %s | **%s×** | %s %s |" % (
            title, unit, fmt(med(data, bench, "haproxy", metric)), fmt(med(data, bench, "nginx", metric)),
            fmt(med(data, bench, "stunnel", metric)), fmt(med(data, bench, "dicomgate-1t", metric)),
            fmt(r), target, verdict))
    bulk_rows = [("bulk MB/s, single-frame", "bulk-single", "mb_per_s"), ("bulk MB/s, multi-frame", "bulk-multi", "mb_per_s"),
                 ("associations/s (in-process, 8-way)", "inproc-c8", "per_s"),
                 ("association p99 ms (in-process, 8-way)", "inproc-c8", "p99_ms")]
    for title, bench, metric in bulk_rows:
        w("| %s | %s | %s | %s | %s | %s× | – |" % (
            title, fmt(med(data, bench, "haproxy", metric)), fmt(med(data, bench, "nginx", metric)),
            fmt(med(data, bench, "stunnel", metric)), fmt(med(data, bench, "dicomgate-1t", metric)),
            fmt(ratio(data, bench, "dicomgate-1t", metric))))
    w("")

    floor_section(w, data, present, machine)

    w("## Machine and tools")
    w("")
    for k in ("nproc", "cpu", "kernel", "date", "haproxy", "nginx", "stunnel", "openssl", "dcmtk", "dicomgate", "rustc"):
        w("- %s: %s" % (k, machine.get(k, "?")))
    threads = os.path.join(work, "threads")
    if os.path.exists(threads):
        w("- tokio worker threads seen in /proc (TOKIO_WORKER_THREADS honoured): " +
          ", ".join(l.strip() for l in open(threads) if l.strip()))
    w("- sizes: bulk single-frame %s files, %s bytes; multi-frame %s files × %s frames, %s bytes; raw %s MiB per run; "
      "echoscu %s associations per run; in-process %s sequential / %s 8-way"
      % (tuple(machine.get("single", "? ?").split()) + tuple(machine.get("multi", "? ? ?").split())
         + (machine.get("raw_mb", "?"), machine.get("echoscu_n", "?")) + tuple(machine.get("inproc", "? ?").split())))
    for k, v in loads.items():
        w("- %s: %s" % (k, v))
    aes128 = openssl_rate(os.path.join(work, "openssl-aes128.txt"))
    aes256 = openssl_rate(os.path.join(work, "openssl-aes256.txt"))
    rsa = rsa_sign_per_s(os.path.join(work, "openssl-rsa.txt"))
    if aes128:
        w("- physical limit, `openssl speed -evp aes-128-gcm` (16 KiB blocks, one core): %.0f MB/s = %.3f CPU-s/GB"
          % (aes128 / 1e6, 1e9 / aes128))
    if aes256:
        w("- `openssl speed -evp aes-256-gcm`: %.0f MB/s = %.3f CPU-s/GB" % (aes256 / 1e6, 1e9 / aes256))
    if rsa:
        w("- `openssl speed rsa2048`: %.0f signs/s = %.3f CPU-ms per handshake signature" % (rsa, 1e3 / rsa))
    direct = data.get(("raw", "direct", "mb_per_s"))
    if direct:
        w("- raw path without any proxy (plain TCP, client → sink): %s MB/s" % cell(direct))
    w("")

    w("## All results")
    for bench, title in BENCHES + [(b, "Memory per idle connection: %s connections, %s" % (
            b.split("-")[2], "TLS handshake done, then idle" if b.split("-")[1] == "tls"
            else "TLS handshake and A-ASSOCIATE exchange done, then idle")) for b in idle_benches]:
        metrics = [m for m in METRICS if any((bench, p, m) in data for p in present)]
        if not metrics:
            continue
        w("")
        w("### " + title)
        w("")
        head = "| proxy | " + " | ".join("%s | ×HAProxy" % METRICS[m][0] for m in metrics) + " |"
        w(head)
        w("|---" * (1 + 2 * len(metrics)) + "|")
        for p in present:
            if not any((bench, p, m) in data for m in metrics):
                continue
            row = [LABEL[p]]
            for m in metrics:
                row.append(cell(data.get((bench, p, m), [])))
                row.append(fmt(ratio(data, bench, p, m)))
            w("| " + " | ".join(row) + " |")
        errs = {p: sum(data.get((bench, p, "errors"), []) + data.get((bench, p, "failed"), [])) for p in present}
        bad = {p: n for p, n in errs.items() if n}
        if bad:
            w("")
            w("Failures: " + ", ".join("%s %d" % (LABEL[p], n) for p, n in bad.items()))
    w("")
    w("## DICOM relay against the byte-copy baseline (issue 6)")
    w("")
    w("| benchmark | throughput DICOM/bytes | CPU-s/GB DICOM/bytes |")
    w("|---|---|---|")
    for bench in ("raw", "bulk-single", "bulk-multi"):
        a, b = med(data, bench, "dicomgate-1t", "mb_per_s"), med(data, bench, "dicomgate-1t-bytes", "mb_per_s")
        c, d = med(data, bench, "dicomgate-1t", "cpu_s_per_gb"), med(data, bench, "dicomgate-1t-bytes", "cpu_s_per_gb")
        w("| %s | %s | %s |" % (bench, fmt(a / b) if b else "–", fmt(c / d) if d else "–"))
    if any(k[1] == "dicomgate-1t-tuned" for k in data):
        w("")
        w("## With the glibc rep-movsb tunable on both sides (`%s`)" % machine.get("tuned_env", "?"))
        w("")
        w("| target | dicomgate-tuned / HAProxy-tuned | dicomgate-tuned / HAProxy (untuned) |")
        w("|---|---|---|")
        for title, bench, metric, target, ok in targets:
            w("| %s %s | %s× | %s× |" % (title, target, fmt(ratio(data, bench, "dicomgate-1t-tuned", metric, "haproxy-tuned")),
                                         fmt(ratio(data, bench, "dicomgate-1t-tuned", metric))))
    if any(k[1] == "dicomgate-1t-before" for k in data):
        w("")
        w("## Relay change, before → after (same run, 1 worker, DICOM relay)")
        w("")
        w("Before: `%s`." % machine.get("before", "?"))
        w("")
        w("| benchmark | metric | before | after | after / before |")
        w("|---|---|---|---|---|")
        for bench in ["raw", "bulk-single", "bulk-multi", "inproc-c8", "echoscu-c8"] + idle_benches:
            for metric in METRICS:
                if (bench, "dicomgate-1t-before", metric) in data and metric not in ("p50_ms",):
                    w("| %s | %s | %s | %s | %s× |" % (
                        bench, METRICS[metric][0], cell(data[(bench, "dicomgate-1t-before", metric)]),
                        cell(data.get((bench, "dicomgate-1t", metric), [])),
                        fmt(ratio(data, bench, "dicomgate-1t", metric, "dicomgate-1t-before"))))
    profiles = [(p, os.path.join(work, "profile.%s.txt" % p)) for p in PROXIES]
    profiles = [(p, f) for p, f in profiles if os.path.exists(f) and os.path.getsize(f) > 0]
    if profiles:
        w("")
        w("## Profile tops, raw path (`perf record --call-graph dwarf`, self time, symbols ≥ 1 %)")
        for p, f in profiles:
            w("")
            w("%s:" % LABEL[p])
            w("")
            w("```")
            for line in open(f):
                w(line.rstrip())
            w("```")
    print("\n".join(out))


def floor_section(w, data, present, machine):
    """Raw CPU per GB beside the floor measured in the same rounds."""
    suite = machine.get("raw_suite", "aes128")
    floors = [("aead-" + suite, "AES-%s-GCM, aws-lc-rs (the gateway's library), one core, 16 KiB records, in place" % suite[3:]),
              ("openssl-aes-" + suite[3:], "`openssl speed -evp aes-%s-gcm -bytes 16384`, one core" % suite[3:])]
    floors = [(k, t) for k, t in floors if data.get(("floor", k, "cpu_s_per_gb"))]
    if not floors:
        return
    w("## The floor, same run")
    w("")
    w("One core's AES-GCM per GB, measured in every round beside the figures (the raw test negotiates "
      "TLS 1.3 AES-%s-GCM):" % suite[3:])
    w("")
    for k, t in floors:
        w("- %s: %s CPU-s/GB" % (t, cell(data[("floor", k, "cpu_s_per_gb")])))
    w("")
    key = floors[0][0]
    floor = med(data, "floor", key, "cpu_s_per_gb")
    w("| proxy | raw CPU-s/GB | × aws-lc-rs floor | syscalls/MB |")
    w("|---|---|---|---|")
    for p in present:
        v = data.get(("raw", p, "cpu_s_per_gb"))
        if not v:
            continue
        w("| %s | %s | %s× | %s |" % (LABEL[p], cell(v), fmt(statistics.median(v) / floor) if floor == floor else "–",
                                       cell(data.get(("raw", p, "syscalls_per_mb"), []))))
    w("")


if __name__ == "__main__":
    main()

"""Host-side pieces shared by the system tests (vm_test.py, container_test.py):
the PASS/FAIL report, free ports, the DCMTK peers that play the cloud, and
the bounded storescu load loop. Standard library only: the CI machine has
Debian's python3 and nothing else is installed for these tests.
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

# The cloud's AE title and the called AE titles the test configurations route.
CLOUD_AE = "BUTTERFLY"
PACS_AE = "PACS"
MWL_AE = "MWL"

# One object, one association (storescu sends each file in its own
# association unless told otherwise): the shape of the cloud's traffic.
IMAGE_DUMP = """\
(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [2.25.27182818284590452353602874713526]
(0008,0060) CS [OT]
(0010,0010) PN [System^Test]
(0010,0020) LO [PID-SYS-1]
(0020,000d) UI [2.25.16180339887498948482045868343656]
(0020,000e) UI [2.25.14142135623730950488016887242097]
"""

# A worklist query for everything (findscu -W answers from wlmscpfs).
WORKLIST_QUERY_DUMP = """\
(0008,0050) SH []
(0010,0010) PN []
(0040,0100) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=1)
    (0008,0060) CS []
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
"""

# One worklist item (tests/support/dcmtk.rs has the same for the Rust suites).
WORKLIST_ITEM_DUMP = """\
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [ACC-SYS-1]
(0010,0010) PN [System^Worklist]
(0010,0020) LO [PID-SYS-MWL]
(0040,0100) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=2)
    (0008,0060) CS [US]
    (0040,0001) AE [BUTTERFLY]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
"""

DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")  # DCMTK 3.6.7: else ~40 ms per PDU


def log(msg):
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CheckFailed(Exception):
    pass


def require(cond, msg):
    """Fails the check with `msg` (a string, or a function making it only
    when needed: an f-string is evaluated even when the check holds)."""
    if not cond:
        raise CheckFailed(msg() if callable(msg) else msg)


class Report:
    """One PASS or FAIL line per check, and the closing 'N passed, N failed'."""

    def __init__(self, suite):
        self.suite = suite
        self.passed = []
        self.failed = []

    def run(self, name, fn, fatal=False):
        only = os.environ.get("DG_SYS_CHECKS")  # a developer's shortcut; never set in CI
        if only and name not in only.split(",") and os.environ.get("CI") != "true":
            print(f"SKIP {self.suite}/{name} (not in DG_SYS_CHECKS)", flush=True)
            return True
        log(f"check {name} ...")
        start = time.monotonic()
        try:
            detail = fn()
        except CheckFailed as e:
            self._fail(name, str(e), start)
        except Exception as e:  # a crash of the check itself is a failure too
            self._fail(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()}", start)
        else:
            took = time.monotonic() - start
            self.passed.append(name)
            print(f"PASS {self.suite}/{name} ({took:.0f} s){': ' + detail if detail else ''}", flush=True)
            return True
        if fatal:
            raise SystemExit(self.finish())
        return False

    def _fail(self, name, why, start):
        self.failed.append(name)
        print(f"FAIL {self.suite}/{name} ({time.monotonic() - start:.0f} s): {why}", flush=True)

    def finish(self):
        print(f"{self.suite}: {len(self.passed)} passed, {len(self.failed)} failed", flush=True)
        return 1 if self.failed or not self.passed else 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, timeout=60, check=True, env=None, **kw):
    """Runs a host command; returns CompletedProcess (text)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and p.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p


def make_dicom_files(work):
    """image.dcm, mwl-query.dcm and the worklist item, by DCMTK's dump2dcm."""
    work = Path(work)
    out = {}
    for name, dump in (("image", IMAGE_DUMP), ("mwl-query", WORKLIST_QUERY_DUMP), ("item1", WORKLIST_ITEM_DUMP)):
        src = work / f"{name}.dump"
        src.write_text(dump)
        dst = work / (f"{name}.wl" if name == "item1" else f"{name}.dcm")
        run(["dump2dcm", str(src), str(dst)])
        out[name] = dst
    return out


def tls_args(cert):
    """DCMTK's TLS as the cloud: no client certificate; the server's
    certificate pinned when we have it, else not verified."""
    return ["+tla", "+cf", str(cert)] if cert else ["+tla", "-ic"]


def dcmtk(tool, args, host, port, timeout=60):
    cmd = [tool, "-to", "30", "-ta", "30", "-td", "30", *args, host, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=DCMTK_ENV)


def echoscu(host, port, cert=None, calling=CLOUD_AE, called=PACS_AE):
    return dcmtk("echoscu", ["-aet", calling, "-aec", called, *tls_args(cert)], host, port)


def storescu(host, port, image, cert=None, called=PACS_AE):
    cmd = ["storescu", "-to", "30", "-ta", "30", "-td", "30", "-aet", CLOUD_AE, "-aec", called,
           *tls_args(cert), host, str(port), str(image)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=DCMTK_ENV)


def findscu_worklist(host, port, query, cert=None):
    cmd = ["findscu", "-W", "-to", "30", "-ta", "30", "-td", "30", "-aet", CLOUD_AE, "-aec", MWL_AE,
           *tls_args(cert), host, str(port), str(query)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=DCMTK_ENV)


def batch_storescu(host, port, image, cert, work, count):
    """Starts one association carrying `count` objects (storescu +sd DIR):
    a live association to stop or drain under. Returns the Popen."""
    batch = Path(work) / f"batch-{count}"
    batch.mkdir(exist_ok=True)
    for i in range(count):
        shutil.copy(image, batch / f"{i:05}.dcm")
    cmd = ["storescu", "-to", "30", "-ta", "30", "-td", "30", "-aet", CLOUD_AE, "-aec", PACS_AE,
           *tls_args(cert), "+sd", host, str(port), str(batch)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)


def http_get(port, path, host="127.0.0.1", timeout=10):
    """(status, body) of a plain HTTP/1.0 GET, without any proxy settings."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace")


def metric(text, name, labels):
    """The value of one sample of the Prometheus text `text`, or 0."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class StoreLoop:
    """storescu against host:port, one object per association, back to back,
    in a thread, until stop() or its own bounds (count, seconds)."""

    def __init__(self, host, port, image, cert=None, max_count=5000, max_seconds=600):
        self.args = (host, port, image, cert)
        self.max_count = max_count
        self.max_seconds = max_seconds
        self.results = []  # (start monotonic, duration s, returncode, output tail)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        host, port, image, cert = self.args
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.results) < self.max_count and time.monotonic() < end:
            t0 = time.monotonic()
            try:
                p = storescu(host, port, image, cert)
                rc, tail = p.returncode, (p.stdout + p.stderr)[-600:]
            except subprocess.TimeoutExpired:
                rc, tail = -1, "storescu timed out"
            self.results.append((t0, time.monotonic() - t0, rc, tail))

    def wait_for(self, n, timeout=120):
        """Blocks until n more associations ran (the loop is really going)."""
        target = len(self.results) + n
        end = time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.1)
        require(len(self.results) >= target, f"the storescu loop did not run {n} associations in {timeout} s")

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=120)

    def summary(self):
        failed = [r for r in self.results if r[2] != 0]
        longest = max((r[1] for r in self.results), default=0.0)
        return len(self.results), failed, longest

    def describe(self):
        n, failed, longest = self.summary()
        return f"{n} associations, {len(failed)} failed, longest {longest:.2f} s"

    def require_clean(self, minimum):
        n, failed, _ = self.summary()
        require(n >= minimum, f"only {n} associations ran (expected at least {minimum}): {self.describe()}")
        if failed:
            first = failed[0]
            raise CheckFailed(f"{self.describe()}; first failure (rc {first[2]}):\n{first[3]}")


def main_guard(fn):
    try:
        sys.exit(fn())
    except KeyboardInterrupt:
        sys.exit(130)

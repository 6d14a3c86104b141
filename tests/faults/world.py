"""The fault suite's actors inside tests/faults/net.py's namespaces: the two
gateways (the release binary), keepalived on each (the shipped
deploy/keepalived/keepalived.conf, adapted by substitution), the PACS
(DCMTK storescp and wlmscpfs), the cloud's storescu/findscu, and the test
objects with their byte-for-byte comparison.

"Identical at the PACS" means: the data set bytes (everything after the
File Meta Information, group 0002) of the file storescp wrote equal those of
the file storescu sent, byte for byte. storescp runs with +B (bit
preserving: it writes the data set exactly as it arrived) and writes its own
meta header (its implementation UID, the source AE title), which is why the
meta header is not compared.
"""

import json
import os
import random
import re
import signal
import struct
import subprocess
import time

import net

SCU_ENV = dict(os.environ, TCP_NODELAY="1")
STORE_PORT = 2762
MWL_PORT = 2761
CLOUD_AE = "CLOUD"
PACS_AE = "STORESCP"
MWL_AE = "MWL"


# --- DICOM test objects -------------------------------------------------------

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"}
_uid_counter = [0]


def new_uid():
    _uid_counter[0] += 1
    return "2.25.%d" % ((time.time_ns() << 20 ^ os.getpid() << 8 ^ _uid_counter[0]) % 10**37)


def element(group, elem, vr, value):
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    head = struct.pack("<HH", group, elem) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def secondary_capture(path, size, rng):
    """A Secondary Capture image of about `size` bytes of random pixels;
    returns its SOP Instance UID."""
    uid = new_uid()
    side = max(8, int(size ** 0.5)) & ~1
    pixels = rng.randbytes(side * side)
    us = lambda v: struct.pack("<H", v)
    ds = b"".join([
        element(0x0008, 0x0016, b"UI", SECONDARY_CAPTURE.encode()),
        element(0x0008, 0x0018, b"UI", uid.encode()),
        element(0x0008, 0x0060, b"CS", b"OT"),
        element(0x0010, 0x0010, b"PN", b"Fault^Suite"),
        element(0x0010, 0x0020, b"LO", b"DGF-1"),
        element(0x0020, 0x000D, b"UI", new_uid().encode()),
        element(0x0020, 0x000E, b"UI", new_uid().encode()),
        element(0x0028, 0x0002, b"US", us(1)),
        element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
        element(0x0028, 0x0010, b"US", us(side)),
        element(0x0028, 0x0011, b"US", us(side)),
        element(0x0028, 0x0100, b"US", us(8)),
        element(0x0028, 0x0101, b"US", us(8)),
        element(0x0028, 0x0102, b"US", us(7)),
        element(0x0028, 0x0103, b"US", us(0)),
        element(0x7FE0, 0x0010, b"OB", pixels),
    ])
    meta_body = b"".join([
        element(0x0002, 0x0001, b"OB", b"\0\1"),
        element(0x0002, 0x0002, b"UI", SECONDARY_CAPTURE.encode()),
        element(0x0002, 0x0003, b"UI", uid.encode()),
        element(0x0002, 0x0010, b"UI", EXPLICIT_VR_LE.encode()),
        element(0x0002, 0x0012, b"UI", b"2.25.1"),
    ])
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta + ds)
    return uid


def dataset_bytes(path):
    """The data set of a Part-10 file: what follows the meta group (0002),
    whose length (0002,0000) is read, not assumed."""
    data = open(path, "rb").read()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path}: no DICM preamble")
    group, elem = struct.unpack_from("<HH", data, 132)
    if (group, elem) != (2, 0):
        raise ValueError(f"{path}: meta group length missing")
    meta_len = struct.unpack_from("<I", data, 132 + 8)[0]
    return data[132 + 12 + meta_len:]


def make_objects(directory, count, min_size, max_size, rng):
    """`count` files; returns [(path, uid)]."""
    os.makedirs(directory, exist_ok=True)
    out = []
    for i in range(count):
        path = os.path.join(directory, f"obj{i:03d}.dcm")
        out.append((path, secondary_capture(path, rng.randint(min_size, max_size), rng)))
    return out


# --- processes ------------------------------------------------------------------

def in_ns(ns, argv, log_path, env=None):
    log = open(log_path, "ab")
    return subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env or SCU_ENV)


def wait_until(what, predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(ns, url, timeout=2):
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "--silent", "--max-time", str(timeout), url],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


class Pacs:
    """storescp (+B, one file per SOP Instance UID) and wlmscpfs in dgf-pacs."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pacs")
        self.store_dir = os.path.join(self.dir, "received")
        os.makedirs(self.store_dir, exist_ok=True)
        wl = os.path.join(self.dir, "worklist", MWL_AE)
        os.makedirs(wl, exist_ok=True)
        open(os.path.join(wl, "lockfile"), "w").close()
        dump = os.path.join(self.dir, "item.dump")
        with open(dump, "w") as f:
            f.write(WORKLIST_DUMP)
        subprocess.run(["dump2dcm", dump, os.path.join(wl, "item1.wl")], check=True, capture_output=True)
        self.storescp_log = os.path.join(self.dir, "storescp.log")
        self.storescp = None
        self.start_storescp()
        self.wlm = in_ns(net.PACS, ["wlmscpfs", "-v", "-dfp", os.path.join(self.dir, "worklist"), "-ta", "30",
                                    "-td", "60", str(11113)], os.path.join(self.dir, "wlmscpfs.log"))

    def start_storescp(self):
        self.storescp = in_ns(net.PACS, ["storescp", "-v", "+B", "-aet", PACS_AE, "-ta", "30", "-td", "60",
                                         "-od", self.store_dir, "11112"], self.storescp_log)

    def received(self):
        """{uid: path} of the stored files (storescp names them MODALITY.UID)."""
        out = {}
        for name in os.listdir(self.store_dir):
            if "." in name:
                out[name.split(".", 1)[1]] = os.path.join(self.store_dir, name)
        return out

    def clear(self):
        for name in os.listdir(self.store_dir):
            os.unlink(os.path.join(self.store_dir, name))

    def log_text(self):
        return open(self.storescp_log, errors="replace").read()


# One worklist item, as tests/support/dcmtk.rs's (wlmscpfs skips items that
# lack attributes it requires).
WORKLIST_DUMP = """(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [ACC-DGF-1]
(0010,0010) PN [Fault^Worklist]
(0010,0020) LO [PID-DGF-1]
(0010,0030) DA [19700101]
(0010,0040) CS [O]
(0020,000d) UI [2.25.271828182845904523536028747135]
(0032,1032) PN [Referrer^Doctor]
(0032,1060) LO [Lung ultrasound]
(0040,0100) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=9)
    (0008,0060) CS [US]
    (0040,0001) AE [CLOUD]
    (0040,0002) DA [20240102]
    (0040,0003) TM [101500]
    (0040,0006) PN [Operator^Test]
    (0040,0007) LO [Lung US]
    (0040,0009) SH [SPS-1]
    (0040,0010) SH [STATION1]
    (0040,0011) SH [ROOM1]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0040,1001) SH [RP-1]
(0040,1003) SH [LOW]
"""


def gateway_config(state_dir, dimse=None):
    timeouts = f"\n    timeouts: {{dimse: {dimse}}}" if dimse else ""
    tls = (f"{{certificate: {state_dir}/scp_cert.pem, private_key: {state_dir}/scp_key.pem, "
           f"generate_if_missing: true}}")
    servers = ", ".join(f'"{a}:11112"' for a in net.PACS_IPS)
    mwl = ", ".join(f'"{a}:11113"' for a in net.PACS_IPS)
    # Defaults everywhere else: robustness is tested at default limits
    # (the frozen-SCP test sets timeouts.dimse, the key it is about).
    return f"""admin: {{listen: 127.0.0.1:9102}}
log: {{format: json, level: info}}
shutdown: {{grace_period: 2s}}
backends:
  pacs:
    ae_title: {PACS_AE}
    servers: [{servers}]
  worklist:
    ae_title: {MWL_AE}
    servers: [{mwl}]
listeners:
  store:
    listen: 0.0.0.0:{STORE_PORT}
    tls: {tls}
    allow: [198.18.1.0/24]
    calling_ae_titles: [{CLOUD_AE}]
    routes: {{{PACS_AE}: pacs}}{timeouts}
  worklist:
    listen: 0.0.0.0:{MWL_PORT}
    tls: {tls}
    allow: [198.18.1.0/24]
    calling_ae_titles: [{CLOUD_AE}]
    routes: {{{MWL_AE}: worklist}}
"""


class Gateway:
    def __init__(self, ns, binary, workdir, state_dir):
        self.ns = ns
        self.binary = binary
        self.dir = os.path.join(workdir, ns)
        os.makedirs(self.dir, exist_ok=True)
        self.state_dir = state_dir
        self.config = os.path.join(self.dir, "config.yaml")
        self.log = os.path.join(self.dir, "dicomgate.log")
        self.write_config()
        self.proc = None

    def write_config(self, dimse=None):
        with open(self.config, "w") as f:
            f.write(gateway_config(self.state_dir, dimse))

    def start(self):
        # `ip netns exec` execs the program: the child's PID is dicomgate's.
        self.proc = in_ns(self.ns, [self.binary, "run", "--config", self.config], self.log)
        wait_until(f"{self.ns} ready", self.ready, 20)

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.ns}: dicomgate exited {self.proc.returncode}; see {self.log}")
        return http_get(self.ns, "http://127.0.0.1:9102/readyz") is not None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def reload(self):
        before = self.reloads()
        self.proc.send_signal(signal.SIGHUP)
        wait_until(f"{self.ns} reload", lambda: self.reloads() > before, 10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics(self):
        return http_get(self.ns, "http://127.0.0.1:9102/metrics") or ""

    def metric(self, name, labels=""):
        total = None
        for line in self.metrics().splitlines():
            if line.startswith(name + labels) or (not labels and line.startswith(name + " ")):
                if line.startswith("#"):
                    continue
                total = (total or 0) + float(line.rsplit(" ", 1)[1])
        return total

    def reloads(self):
        return self.metric("dicomgate_config_reloads_total", '{result="success"}') or 0

    def status(self):
        text = http_get(self.ns, "http://127.0.0.1:9102/status")
        return json.loads(text) if text else None

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def audit(self):
        """The audit events (JSON log lines of target dicomgate::audit), in order."""
        out = []
        for line in open(self.log, errors="replace"):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("target") == "dicomgate::audit":
                out.append(ev)
        return out

    def log_lines(self, needle):
        return [l for l in open(self.log, errors="replace") if needle in l]


# --- keepalived -------------------------------------------------------------------

def adapt_keepalived(shipped_text, node):
    """The shipped file for gw-a, adapted to this network only in interface
    names and addresses; for gw-b, also as the file's header says: swap
    unicast_src_ip/unicast_peer and set priority 100."""
    a, b = net.GW_FRONT[net.GWA], net.GW_FRONT[net.GWB]
    text = shipped_text
    subs = [
        (r"\beth0\b", net.FRONT_IF),
        (r"\b10\.20\.1\.10\b", net.VIP),
        (r"\b10\.20\.1\.11\b", "@SELF@"),
        (r"\b10\.20\.1\.12\b", "@PEER@"),
    ]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        if n == 0:
            raise AssertionError(f"shipped keepalived.conf no longer contains {pattern}")
    if node == net.GWA:
        text = text.replace("@SELF@", a).replace("@PEER@", b)
    else:
        text = text.replace("@SELF@", b).replace("@PEER@", a)
        # The header names gw-b's priority ("... and set priority N").
        m = re.search(r"set\s*\n?#?\s*priority (\d+)", shipped_text)
        if not m:
            raise AssertionError("shipped keepalived.conf: the header does not name gw-b's priority")
        text, n = re.subn(r"(\n\s*priority\s+)\d+", r"\g<1>" + m.group(1), text)
        if n != 1:
            raise AssertionError("shipped keepalived.conf: expected one priority line")
    return text


class Keepalived:
    def __init__(self, ns, conf_text, workdir):
        self.ns = ns
        self.dir = os.path.join(workdir, ns)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "keepalived.conf")
        with open(self.conf, "w") as f:
            f.write(conf_text)
        os.chmod(self.conf, 0o644)
        self.log = os.path.join(self.dir, "keepalived.log")
        self.proc = None

    def start(self):
        # Own pid files: other keepalived instances on this machine (the
        # other gateway, anyone else's) must not collide.
        self.proc = in_ns(self.ns, [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
            "--use-file", self.conf,
            "--pid", os.path.join(self.dir, "keepalived.pid"),
            "--vrrp_pid", os.path.join(self.dir, "vrrp.pid"),
            "--checkers_pid", os.path.join(self.dir, "checkers.pid"),
        ], self.log)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self):
        return open(self.log, errors="replace").read()


# --- the cloud -----------------------------------------------------------------------

def storescu(files, host=net.VIP, timeout=120, dimse=60, extra=()):
    """storescu over TLS (anonymous, as the README walk-through) from dgf-cloud.
    Returns (ok, successes, output, started, ended)."""
    argv = ["ip", "netns", "exec", net.CLOUD, "storescu", "-v", "+tla", "-ic", "-aet", CLOUD_AE, "-aec", PACS_AE,
            "-to", "10", "-ta", "30", "-td", str(dimse), *extra, host, str(STORE_PORT)] + list(files)
    started = time.time()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=SCU_ENV, timeout=timeout)
        out, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, code = f"storescu did not end within {timeout}s: {e}", -1
    ended = time.time()
    successes = out.count("Received Store Response (Success)")
    ok = code == 0 and successes == len(files) and "E:" not in out and "F:" not in out
    return ok, successes, out, started, ended


def findscu_worklist(host=net.VIP, timeout=60):
    argv = ["ip", "netns", "exec", net.CLOUD, "findscu", "-v", "-W", "+tla", "-ic", "-aet", CLOUD_AE, "-aec",
            MWL_AE, "-to", "10", "-ta", "30", "-td", "30", "-k", "(0010,0010)", "-k", "(0010,0020)",
            "-k", "(0040,0100)[0].(0008,0060)=US", host, str(MWL_PORT)]
    r = subprocess.run(argv, capture_output=True, text=True, env=SCU_ENV, timeout=timeout)
    out = r.stdout + r.stderr
    return r.returncode == 0 and "Find Response: 1 (Pending)" in out, out

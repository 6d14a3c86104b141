#!/usr/bin/env python3
"""System test: the Debian package under systemd as PID 1, in a Debian 12 VM.

Driven by scripts/system-test.sh, which builds the image and the two
packages. Each check prints one PASS or FAIL line; the run ends with
"vm: N passed, N failed" and exits 1 if any failed. The guest is booted
twice: once for everything from install to the journald flood, once more to
see the enabled service come up at boot and to purge the package.

Usage: vm_test.py IMAGE_DIR WORK_DIR OLD.deb NEW.deb
"""

import atexit
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).parent))
from sysutil import (CheckFailed, Report, StoreLoop, batch_storescu, echoscu, findscu_worklist, http_get,  # noqa: E402
                     log, main_guard, make_dicom_files, metric, require, storescu)
from vm import Vm  # noqa: E402

HOST_IN_GUEST = "10.0.2.2"  # QEMU user networking: the host as the guest sees it
RESTART_SEC = 2.0            # systemd/dicomgate.service
SECURITY_MAX = 1.5           # scripts/check-systemd.sh's limit, now in the real guest
FLOOD = 20_000

# The admin's configuration: the packaged file's shape with the blanks filled
# in (the PACS and worklist are DCMTK in the guest) and the cloud's address
# being the host's. admin.listen on all addresses so that the host (10.0.2.2)
# reaches /readyz through the forward, and 10.0.2.2 in admin.allow.
CONFIG = f"""\
admin:
  listen: 0.0.0.0:9102
  allow: [127.0.0.0/8, "::1/128", {HOST_IN_GUEST}/32]
log:
  format: text
  level: info
backends:
  pacs:
    ae_title: PACS
    servers: [127.0.0.1:11112]
    health_check:
      mode: echo
      calling_ae_title: DICOMGATE
  worklist:
    ae_title: MWL
    servers: [127.0.0.1:11113]
listeners:
  store:
    listen: 0.0.0.0:2762
    tls:
      certificate: /var/lib/dicomgate/scp_cert.pem
      private_key: /var/lib/dicomgate/scp_key.pem
      generate_if_missing: true
    allow: [{HOST_IN_GUEST}/32]
    calling_ae_titles: [BUTTERFLY]
    routes:
      PACS: pacs
  worklist:
    listen: 0.0.0.0:2761
    tls:
      certificate: /var/lib/dicomgate/scp_cert.pem
      private_key: /var/lib/dicomgate/scp_key.pem
      generate_if_missing: true
    allow: [{HOST_IN_GUEST}/32]
    calling_ae_titles: [BUTTERFLY]
    routes:
      MWL: worklist
"""

# The backends, as services of their own in the guest (enabled: the second
# boot needs them too).
BACKENDS = """\
mkdir -p /var/tmp/pacs /var/tmp/wlm/MWL
touch /var/tmp/wlm/MWL/lockfile
cp /mnt/share/item1.wl /var/tmp/wlm/MWL/
cat >/etc/systemd/system/dg-sys-storescp.service <<'EOF'
[Service]
Environment=TCP_NODELAY=1
ExecStart=/usr/bin/storescp -aet PACS -od /var/tmp/pacs -dhl 11112
[Install]
WantedBy=multi-user.target
EOF
cat >/etc/systemd/system/dg-sys-wlmscpfs.service <<'EOF'
[Service]
Environment=TCP_NODELAY=1
ExecStart=/usr/bin/wlmscpfs -dfp /var/tmp/wlm -dhl 11113
[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now --quiet dg-sys-storescp.service dg-sys-wlmscpfs.service
for p in 11112 11113; do
  for i in $(seq 100); do ss -Hltn "sport = :$p" | grep -q . && break; sleep 0.2; done
  ss -Hltn "sport = :$p" | grep -q . || { echo "backend port $p not listening"; exit 1; }
done
"""

DEB_FILES_LIST = "/var/tmp/dg-sys-files"  # dpkg -L before purge (guest)


class SystemTest:
    def __init__(self, image, work, old_deb, new_deb):
        self.work = Path(work)
        self.share = self.work / "share"
        self.share.mkdir(parents=True, exist_ok=True)
        self.files = make_dicom_files(self.work)
        shutil.copy(self.files["item1"], self.share / "item1.wl")
        shutil.copy(old_deb, self.share / "old.deb")
        shutil.copy(new_deb, self.share / "new.deb")
        (self.share / "config.yaml").write_text(CONFIG)
        self.old_version = Path(old_deb).name.split("_")[1]
        self.new_version = Path(new_deb).name.split("_")[1]
        self.vm = Vm(image, self.work, self.share, "dg-sys-vm")
        self.cert = None
        self.report = Report("vm")
        self.figures = {}

    # -- helpers -----------------------------------------------------------

    @property
    def store_port(self):
        return self.vm.ports["store"]

    def state(self):
        return self.vm.show("dicomgate.service", "MainPID", "InvocationID", "NRestarts", "ActiveState",
                            "SubState", "StatusText", "Result", "ExecMainStatus")

    def admin(self, path):
        return http_get(self.vm.ports["admin"], path)

    def loop(self, **kw):
        return StoreLoop("127.0.0.1", self.store_port, self.files["image"], self.cert, **kw)

    def wait_ready(self, what, timeout=120):
        self.vm.wait("[ \"$(systemctl show -p StatusText --value dicomgate)\" = ready ]", what, timeout)

    def wait_pid_gone(self, pid, timeout=120):
        self.vm.wait(f"! kill -0 {pid} 2>/dev/null", f"process {pid} to exit", timeout)

    # -- the checks, in order -------------------------------------------------

    def boot(self):
        took = self.vm.boot()
        self.figures["boot_to_ssh_s"] = took
        self.vm.ssh("mountpoint -q /mnt/share && systemctl is-system-running --wait >/dev/null || true")
        pid1 = self.vm.out("readlink /proc/1/exe")
        require(pid1.endswith("/systemd"), f"PID 1 is {pid1}, not systemd")
        return f"Debian {self.vm.out('cat /etc/debian_version')}, systemd {self.vm.out('systemctl --version | head -n1')}, SSH after {took:.0f} s"

    def install(self):
        v = self.vm
        v.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/share/old.deb >/var/tmp/apt-install.log 2>&1"
              " || { cat /var/tmp/apt-install.log; exit 1; }", timeout=300)
        enabled = v.out("systemctl is-enabled dicomgate.service || true")
        active = v.out("systemctl is-active dicomgate.service || true")
        require(enabled == "disabled", f"is-enabled says {enabled!r}, expected disabled")
        require(active == "inactive", f"is-active says {active!r}, expected inactive")
        for unit in ("dicomgate-store.socket", "dicomgate-worklist.socket"):
            state = v.out(f"systemctl is-enabled {unit} || true") + "/" + v.out(f"systemctl is-active {unit} || true")
            require(state == "disabled/inactive", f"{unit} is {state} after install")
        user = v.out("getent passwd dicomgate")
        require(user.split(":")[6] in ("/usr/sbin/nologin", "/sbin/nologin"), f"dicomgate user: {user}")
        modes = {
            "/etc/dicomgate": "750 root dicomgate",
            "/etc/dicomgate/config.yaml": "640 root dicomgate",
            "/var/lib/dicomgate": "700 dicomgate dicomgate",
            "/usr/bin/dicomgate": "755 root root",
        }
        for path, want in modes.items():
            got = v.out(f"stat -c '%a %U %G' {path}")
            require(got == want, f"{path} is {got}, expected {want}")
        conffiles = v.out("dpkg-query -W -f='${Conffiles}' dicomgate")
        require("/etc/dicomgate/config.yaml" in conffiles, f"config.yaml is not a conffile: {conffiles!r}")
        listening = v.out("ss -Hltn '( sport = :2761 or sport = :2762 or sport = :9102 )'")
        require(not listening, f"something listens after install:\n{listening}")
        return f"{self.old_version}: disabled, inactive, user and modes as documented, config.yaml a conffile"

    def start(self):
        v = self.vm
        v.ssh(BACKENDS)
        v.ssh("install -m 0640 -o root -g dicomgate /mnt/share/config.yaml /etc/dicomgate/config.yaml")
        v.ssh("runuser -u dicomgate -- dicomgate check --config /etc/dicomgate/config.yaml >/var/tmp/check.log 2>&1;"
              " rc=$?; [ $rc -eq 0 ] || [ $rc -eq 3 ] || { cat /var/tmp/check.log; exit 1; }")
        v.ssh("systemctl enable --now dicomgate.service", timeout=180)
        s = self.state()
        require(s["ActiveState"] == "active" and s["StatusText"] == "ready",
                f"after enable --now: ActiveState={s['ActiveState']} StatusText={s['StatusText']!r}")
        t = v.show("dicomgate.service", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
        ready = (int(t["ActiveEnterTimestampMonotonic"]) - int(t["ExecMainStartTimestampMonotonic"])) / 1e6
        self.figures["start_to_ready_s"] = ready
        listening = v.out("ss -Hltn '( sport = :2761 or sport = :2762 or sport = :9102 )' | wc -l")
        require(listening == "3", f"{listening} of 2761, 2762, 9102 listening")
        # The certificate generated at first start: the host pins it.
        pem = v.out("cat /var/lib/dicomgate/scp_cert.pem")
        require("BEGIN CERTIFICATE" in pem, "no certificate generated in /var/lib/dicomgate")
        self.cert = self.work / "scp_cert.pem"
        self.cert.write_text(pem + "\n")
        key_mode = v.out("stat -c '%a %U' /var/lib/dicomgate/scp_key.pem")
        require(key_mode == "600 dicomgate", f"generated key is {key_mode}")
        return f"Type=notify: active, status 'ready' {ready:.2f} s after exec (pid {s['MainPID']})"

    def from_host(self):
        v = self.vm
        since = v.now()
        e = echoscu("127.0.0.1", self.store_port, self.cert)
        require(e.returncode == 0, f"echoscu (TLS, certificate pinned) from the host failed:\n{e.stdout}{e.stderr}")
        s = storescu("127.0.0.1", self.store_port, self.files["image"], self.cert)
        require(s.returncode == 0, f"storescu from the host failed:\n{s.stdout}{s.stderr}")
        f = findscu_worklist("127.0.0.1", self.vm.ports["worklist"], self.files["mwl-query"], self.cert)
        require(f.returncode == 0, f"findscu (worklist) from the host failed:\n{f.stdout}{f.stderr}")
        stored = v.out("ls /var/tmp/pacs | wc -l")
        require(int(stored) >= 1, "storescp in the guest received nothing")
        # Each association's audit line, with the host's address as peer.
        lines = []
        for _ in range(20):
            lines = [ln for ln in v.journal(since).splitlines()
                     if "connection ended" in ln and f'peer="{HOST_IN_GUEST}:' in ln and 'outcome="forwarded"' in ln]
            if len(lines) >= 3:
                break
            time.sleep(0.5)
        require(len(lines) == 3, f"{len(lines)} audit lines for 3 associations from the host:\n" + "\n".join(lines))
        for want in ('dimse="C-ECHO', 'dimse="C-STORE', 'dimse="C-FIND'):
            require(any(want in ln for ln in lines), f"no audit line with {want}")
        status, body = self.admin("/readyz")
        require(status == 200 and body.strip() == "ready", f"/readyz from the host: {status} {body!r}")
        status, metrics = self.admin("/metrics")
        require(status == 200, f"/metrics from the host: {status}")
        return "C-ECHO, C-STORE (store) and C-FIND (worklist) over TLS with the pinned certificate; 3 audit lines; /readyz 200"

    def reload_under_load(self):
        v = self.vm
        before = self.state()
        _, m0 = self.admin("/metrics")
        with self.loop() as loop:
            loop.wait_for(5)
            for _ in range(3):
                v.ssh("systemctl reload dicomgate.service", timeout=120)
                loop.wait_for(3)
        _, m1 = self.admin("/metrics")
        ok = metric(m1, "dicomgate_config_reloads_total", {"result": "success"}) - \
            metric(m0, "dicomgate_config_reloads_total", {"result": "success"})
        require(ok == 3, f"dicomgate_config_reloads_total{{result=success}} went up by {ok}, expected 3")
        after = self.state()
        require(after["MainPID"] == before["MainPID"], "the main PID changed on reload")
        loop.require_clean(minimum=10)
        self.figures["reload"] = loop.describe()
        return "3 reloads: " + loop.describe()

    def upgrade_under_load(self):
        v = self.vm
        before = self.state()
        old_pid = before["MainPID"]
        since = v.now()
        with self.loop() as loop:
            loop.wait_for(5)
            t0 = time.monotonic()
            v.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /mnt/share/new.deb </dev/null "
                  ">/var/tmp/apt-upgrade.log 2>&1 || { cat /var/tmp/apt-upgrade.log; exit 1; }", timeout=600)
            apt_s = time.monotonic() - t0
            v.wait(f"[ \"$(systemctl show -p MainPID --value dicomgate)\" != {old_pid} ]",
                   "the main PID to change after the upgrade", timeout=120)
            self.wait_pid_gone(old_pid)
            loop.wait_for(5)
        after = self.state()
        new_pid = after["MainPID"]
        self.new_pid = new_pid
        self.old_pid = old_pid
        version = v.out("dpkg-query -W -f='${Version}' dicomgate")
        require(version == self.new_version, f"installed version {version}, expected {self.new_version}")
        require(after["InvocationID"] == before["InvocationID"],
                lambda: "the service was restarted (new InvocationID): the upgrade must hand over, not restart; "
                        f"meanwhile {loop.describe()}")
        require(after["NRestarts"] == "0", f"NRestarts={after['NRestarts']}")
        require(after["ActiveState"] == "active" and after["StatusText"] == "ready", f"after the upgrade: {after}")
        # The new main process runs the new file (the old one runs a deleted inode).
        exe = v.out(f"readlink /proc/{new_pid}/exe")
        require(exe == "/usr/bin/dicomgate", f"the new main process runs {exe!r}")
        same = v.out(f"cmp -s /proc/{new_pid}/exe /usr/bin/dicomgate && tail -c 64 /usr/bin/dicomgate | tr -d '\\0'")
        require("dicomgate-system-test-upgrade" in same, "the main process does not run the new package's binary")
        journal = v.journal(since)
        require("upgrade: the new process is ready" in journal, "no 'upgrade: the new process is ready' in the journal")
        require(re.search(rf"dicomgate\[{old_pid}\]: .*dicomgate stopped", journal),
                f"the old process {old_pid} did not log 'dicomgate stopped'")
        loop.require_clean(minimum=10)
        self.figures["upgrade"] = loop.describe()
        self.figures["apt_install_s"] = apt_s
        self.supervising = [ln for ln in v.journal(since, "-u dicomgate.service -t systemd").splitlines()
                            if "not our child" in ln]
        return (f"{self.old_version} -> {self.new_version} by apt-get install in {apt_s:.0f} s: {loop.describe()}; "
                f"main PID {old_pid} -> {new_pid}, same InvocationID, NRestarts 0")

    def mainpid_tracking(self):
        """systemd follows the new main PID: status, reload, (crash and stop below)."""
        v = self.vm
        pid = self.new_pid
        status = v.out("systemctl status --no-pager --lines=0 dicomgate.service")
        require(re.search(rf"Main PID: {pid} \(dicomgate\)", status), f"systemctl status does not show Main PID {pid}:\n{status}")
        since = v.now()
        v.ssh("systemctl reload dicomgate.service")
        v.wait(f"journalctl --no-pager --since @{since} _PID={pid} | grep -q 'configuration reloaded'",
               f"the reload to reach pid {pid}", timeout=60)
        if self.supervising:
            raise CheckFailed("systemd does not take the new main process as its child: " + self.supervising[0])
        return f"status shows Main PID {pid}; ExecReload's SIGHUP reached it; systemd took it as its child"

    def sandbox(self):
        v = self.vm
        out = v.out("systemd-analyze security --no-pager dicomgate.service | tail -n 1")
        m = re.search(r"Overall exposure level for dicomgate.service: ([0-9.]+)", out)
        require(m, f"no exposure level in: {out}")
        level = float(m.group(1))
        require(level <= SECURITY_MAX, f"exposure {level} > {SECURITY_MAX}")
        pid = self.new_pid
        st = v.out(f"grep -E '^(Seccomp|NoNewPrivs|CapEff|Uid):' /proc/{pid}/status")
        fields = dict(re.split(r":\s*", ln, maxsplit=1) for ln in st.splitlines())
        require(fields.get("Seccomp") == "2", f"the successor has no seccomp filter: {fields}")
        require(fields.get("NoNewPrivs") == "1", f"NoNewPrivs: {fields}")
        require(int(fields.get("CapEff", "1"), 16) == 0, f"CapEff: {fields}")
        uid = v.out("id -u dicomgate")
        require(fields.get("Uid", "").split()[0] == uid, f"the successor runs as uid {fields.get('Uid')}")
        took = v.out(f"journalctl --no-pager _PID={pid} | grep -c \"upgrade: taking over the previous process's sockets\" || true")
        require(took == "1", f"pid {pid} did not log that it took over its predecessor's sockets")
        return (f"exposure {level} (<= {SECURITY_MAX}); the successor {pid}, started by {self.old_pid} (through "
                "/bin/sh) under the unit's sandbox, runs with seccomp, NoNewPrivs, no capabilities, as dicomgate")

    def crash_restart(self):
        v = self.vm
        pid = self.new_pid
        since = v.now()
        v.ssh(f"kill -9 {pid}")
        v.wait(f"p=$(systemctl show -p MainPID --value dicomgate); [ $p != 0 ] && [ $p != {pid} ]",
               "a new main process after kill -9", timeout=120)
        self.wait_ready("the service to be ready again after kill -9", timeout=120)
        s = self.state()
        require(s["MainPID"] != pid, "the main PID did not change")
        require(s["NRestarts"] == "1", f"NRestarts={s['NRestarts']}, expected 1")
        j = v.out(f"journalctl --no-pager -o short-unix --since @{since} -t systemd -u dicomgate.service")
        died = re.search(r"^([0-9.]+) .*Main process exited, code=killed, status=9/KILL", j, re.M)
        sched = re.search(r"^([0-9.]+) .*Scheduled restart job", j, re.M)
        started = re.search(r"^([0-9.]+) .*Started dicomgate", j, re.M)
        require(died and sched and started, f"systemd's account of the crash is incomplete:\n{j}")
        noticed = float(died.group(1)) - float(since)
        restarted = float(started.group(1)) - float(died.group(1))
        require(noticed < 5, f"systemd noticed the death {noticed:.1f} s after kill -9")
        require(RESTART_SEC - 0.1 <= float(sched.group(1)) - float(died.group(1)) <= RESTART_SEC + 5,
                "the restart was not scheduled RestartSec after the death")
        self.figures["crash_to_ready_s"] = restarted
        return (f"kill -9 of the upgraded main process {pid}: noticed after {noticed:.1f} s, new main PID "
                f"{s['MainPID']} active {restarted:.1f} s after the death (RestartSec={RESTART_SEC:.0f}s), NRestarts 1")

    def stop_after_handover(self):
        """systemctl stop waits for the handed-over main process to drain."""
        v = self.vm
        old = self.state()["MainPID"]
        since = v.now()
        v.ssh("systemctl kill --kill-whom=main --signal=SIGUSR2 dicomgate.service")
        v.wait(f"[ \"$(systemctl show -p MainPID --value dicomgate)\" != {old} ]", "a handover after SIGUSR2", 120)
        self.wait_pid_gone(old)
        new = self.state()["MainPID"]
        scu = batch_storescu("127.0.0.1", self.store_port, self.files["image"], self.cert, self.work, 400)
        end = time.monotonic() + 60
        while metric(self.admin("/metrics")[1], "dicomgate_active_connections", {"listener": "store"}) < 1:
            require(scu.poll() is None, lambda: f"the batch association ended before the stop: {scu.stdout.read()[-500:]}")
            require(time.monotonic() < end, "the batch association did not start")
            time.sleep(0.2)
        t0 = time.monotonic()
        v.ssh("systemctl stop dicomgate.service", timeout=150)
        took = time.monotonic() - t0
        out, _ = scu.communicate(timeout=120)
        s = self.state()
        journal = v.journal(since)
        require(scu.returncode == 0, f"the association live at the stop was cut (storescu {scu.returncode}):\n{out[-800:]}")
        require(s["ActiveState"] == "inactive" and s["Result"] == "success" and s["ExecMainStatus"] == "0",
                f"after stop: {s}")
        require(re.search(rf"dicomgate\[{new}\]: .*draining live associations live=1", journal),
                f"pid {new} did not drain one live association")
        killed = [ln for ln in journal.splitlines() if "SIGKILL" in ln or "not our child" in ln]
        require(not killed, "systemd treated the handed-over process as alien:\n" + "\n".join(killed))
        left = v.out("ps -u dicomgate -o pid= || true")
        require(not left, f"processes of dicomgate left after stop: {left}")
        v.ssh("systemctl start dicomgate.service", timeout=120)
        self.wait_ready("the service to start again")
        return (f"stop of the handed-over main process {new} during a 400-object association: it completed, "
                f"exit status 0, unit inactive (success), in {took:.1f} s")

    def socket_units(self):
        v = self.vm
        # docs/upgrade.md, "Socket activation": the procedure for a running gateway.
        t0 = time.monotonic()
        v.ssh("systemctl enable dicomgate-store.socket dicomgate-worklist.socket"
              " && systemctl stop dicomgate.service"
              " && systemctl start dicomgate-store.socket dicomgate-worklist.socket dicomgate.service", timeout=180)
        moved = time.monotonic() - t0
        self.wait_ready("the service on the socket units")
        for port in (2762, 2761):
            users = v.out(f"ss -Hltnp 'sport = :{port}'")
            require('"systemd",pid=1' in users and '"dicomgate"' in users,
                    f"port {port} is not held by systemd and used by dicomgate: {users}")
        since = v.now()
        with self.loop() as loop:
            loop.wait_for(5)
            for i in range(3):
                pid = self.state()["MainPID"]
                v.ssh("systemctl restart dicomgate.service", timeout=180)
                self.wait_ready(f"restart {i + 1}")
                require(self.state()["MainPID"] != pid, f"restart {i + 1} did not change the main PID")
                loop.wait_for(5)
        took = v.out(f"journalctl --no-pager --since @{since} -u dicomgate.service | grep -c 'sockets passed by systemd' || true")
        require(took == "3", f"{took} of 3 restarted processes said they took the sockets from systemd")
        loop.require_clean(minimum=15)
        self.figures["restarts"] = loop.describe()
        self.figures["move_to_sockets_s"] = moved
        return f"moved in {moved:.1f} s (service stopped meanwhile); 3 restarts: {loop.describe()}"

    def journald_flood(self):
        """20,000 refused connections, and the real associations of the same
        30 s (journald's rate-limit interval) all keep their audit lines."""
        v = self.vm
        _, m0 = self.admin("/metrics")
        since = v.now()
        echoes = []  # (returncode, output) of C-ECHOs from the host meanwhile
        stop = threading.Event()

        def echo_loop():
            end = time.monotonic() + 600
            while not stop.is_set() and len(echoes) < 2000 and time.monotonic() < end:
                e = echoscu("127.0.0.1", self.store_port, self.cert)
                echoes.append((e.returncode, e.stdout + e.stderr))
        echo = threading.Thread(target=echo_loop, daemon=True)
        echo.start()
        # From the guest's loopback, which the listener's allow list does not
        # name: each connection is refused before TLS. bash's /dev/tcp in two
        # loops, bounded by count. A redirection on a regular builtin opens
        # and closes the connection for that command only; a failed one does
        # not end the shell (exec's would).
        out = v.out(f"""cat >/var/tmp/flood.sh <<'EOF'
ok=0; fail=0
for ((i = 0; i < {FLOOD // 2}; i++)); do
  if true <>/dev/tcp/127.0.0.1/2762; then ok=$((ok + 1)); else fail=$((fail + 1)); fi
done 2>/dev/null
echo "$ok $fail"
EOF
start=$(date +%s.%N)
bash /var/tmp/flood.sh >/var/tmp/flood-1.out & bash /var/tmp/flood.sh >/var/tmp/flood-2.out & wait
echo "$start $(date +%s.%N) $(cat /var/tmp/flood-1.out) $(cat /var/tmp/flood-2.out)"
""", timeout=900).split()
        # Keep the cloud's traffic going at least through journald's first
        # interval (30 s): lines suppressed there would be lost.
        end = float(out[0]) + 30
        while float(v.now()) < end:
            time.sleep(1)
        stop.set()
        echo.join(timeout=120)
        flood_s = float(out[1]) - float(out[0])
        connected = int(out[2]) + int(out[4])
        time.sleep(11)  # the refusal summary interval (10 s)
        _, m1 = self.admin("/metrics")
        denied = metric(m1, "dicomgate_connections_total", {"listener": "store", "outcome": "denied_ip"}) - \
            metric(m0, "dicomgate_connections_total", {"listener": "store", "outcome": "denied_ip"})
        journal = v.journal(since)
        audit = [ln for ln in journal.splitlines() if "connection ended" in ln and f'peer="{HOST_IN_GUEST}:' in ln]
        refusals = [ln for ln in journal.splitlines() if "denied_ip" in ln]
        unit_lines = len(journal.splitlines())
        suppressed = v.out(f"journalctl --no-pager --since @{since} -u systemd-journald.service | grep -i suppress || true")
        failed = [o for rc, o in echoes if rc != 0]
        if failed:
            raise CheckFailed(f"{len(failed)} of {len(echoes)} C-ECHOs failed during the flood: {failed[0][-500:]}")
        require(len(echoes) >= 10, f"only {len(echoes)} C-ECHOs ran during the 30 s")
        require(connected == FLOOD, f"the flood made {connected} of {FLOOD} connections: {out}")
        require(denied == FLOOD, f"dicomgate_connections_total{{outcome=denied_ip}} went up by {denied:.0f}, expected {FLOOD}")
        require(not suppressed, f"journald suppressed messages:\n{suppressed}")
        require(len(audit) == len(echoes), f"{len(audit)} audit lines in the journal for {len(echoes)} associations")
        require(refusals, "no refusal summary in the journal")
        require(unit_lines < 300, f"the unit wrote {unit_lines} journal lines for {FLOOD} refused connections")
        self.figures["flood"] = f"{FLOOD} in {flood_s:.1f} s"
        return (f"{FLOOD} denied connections in {flood_s:.1f} s, all counted; {len(echoes)} C-ECHOs meanwhile, "
                f"all {len(audit)} audit lines in the journal; the unit wrote {unit_lines} lines in all "
                f"({len(refusals)} refusal lines); journald suppressed nothing")

    def reboot_to_ready(self):
        v = self.vm
        v.poweroff()
        self.vm = Vm(v.image, self.work, self.share, "dg-sys-vm")  # new ports, same disk
        self.vm.overlay = v.overlay
        took = self.vm.boot()
        self.wait_ready("the enabled service to be ready after boot", timeout=300)
        t = self.vm.show("dicomgate.service", "ActiveEnterTimestampMonotonic")
        kernel = float(self.vm.out("cut -d' ' -f1 /proc/uptime"))
        ready = int(t["ActiveEnterTimestampMonotonic"]) / 1e6
        require(0 < ready < kernel, f"ActiveEnterTimestampMonotonic {ready} vs uptime {kernel}")
        self.figures["boot_to_ready_s"] = ready
        for port in (2762, 2761):
            users = self.vm.out(f"ss -Hltnp 'sport = :{port}'")
            require('"systemd",pid=1' in users, f"port {port} not held by the socket unit after boot: {users}")
        # The PACS came up beside the gateway: its health check says so first.
        end = time.monotonic() + 60
        while metric(self.admin("/metrics")[1], "dicomgate_backend_up", {"backend": "pacs"}) != 1:
            require(time.monotonic() < end, "the PACS was not up for the gateway within 60 s of its start")
            time.sleep(1)
        e = echoscu("127.0.0.1", self.vm.ports["store"], self.cert)
        require(e.returncode == 0, f"echoscu after reboot failed:\n{e.stdout}{e.stderr}")
        return f"ready {ready:.1f} s after the kernel started (SSH after {took:.0f} s of QEMU); C-ECHO accepted"

    def purge(self):
        v = self.vm
        v.ssh(f"dpkg-query -L dicomgate >{DEB_FILES_LIST}")
        v.ssh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q dicomgate </dev/null >/var/tmp/apt-purge.log 2>&1"
              " || { cat /var/tmp/apt-purge.log; exit 1; }", timeout=300)
        left = v.out(f"""while read -r f; do [ -e "$f" ] && [ ! -d "$f" ] && echo "$f"; done <{DEB_FILES_LIST}
for d in /etc/dicomgate /var/lib/dicomgate /usr/share/doc/dicomgate /usr/share/dicomgate; do [ -e "$d" ] && echo "$d"; done
find /etc/systemd /run/systemd/system -name 'dicomgate*' 2>/dev/null
getent passwd dicomgate || true; getent group dicomgate || true
ps -u dicomgate -o pid= 2>/dev/null || true
ss -Hltn '( sport = :2761 or sport = :2762 or sport = :9102 )'
true""")
        require(not left, f"left after purge:\n{left}")
        unit = v.out("systemctl list-units --all --no-legend 'dicomgate*' | wc -l")
        require(unit == "0", f"{unit} dicomgate units still loaded after purge")
        return "no file, directory, user, group, unit, process or listening port left"

    # -- driver ------------------------------------------------------------

    def run(self):
        r = self.report
        r.run("boot", self.boot, fatal=True)
        r.run("install", self.install, fatal=True)
        r.run("start", self.start, fatal=True)
        r.run("tls-from-host", self.from_host)
        r.run("reload-under-load", self.reload_under_load)
        if r.run("upgrade-under-load", self.upgrade_under_load):
            r.run("mainpid-status-and-reload", self.mainpid_tracking)
            r.run("sandbox", self.sandbox)
            r.run("crash-restart", self.crash_restart)
        r.run("stop-after-handover", self.stop_after_handover)
        r.run("socket-units", self.socket_units)
        r.run("journald-flood", self.journald_flood)
        r.run("reboot-to-ready", self.reboot_to_ready)
        r.run("purge", self.purge)
        self.vm.poweroff()
        log("figures: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in self.figures.items()))
        return r.finish()


def main():
    image, work, old_deb, new_deb = sys.argv[1:5]
    test = SystemTest(image, work, old_deb, new_deb)
    atexit.register(lambda: test.vm.kill())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return test.run()


if __name__ == "__main__":
    main_guard(main)

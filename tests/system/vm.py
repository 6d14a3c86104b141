"""The Debian 12 guest of the system test: QEMU with TCG (not /dev/kvm: on
this kind of machine it is a nested software implementation, slower than
TCG), booted from the image tests/system/vm-image.sh built, on a throwaway
qcow2 overlay, with QEMU's user network (the guest sees the host as
10.0.2.2) and the host's test directory shared over 9p at /mnt/share.
The test drives the guest over SSH (one multiplexed connection).
"""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from sysutil import CheckFailed, free_port, log

# The guest ports the host reaches through QEMU's forwards.
GUEST_PORTS = {"ssh": 22, "store": 2762, "worklist": 2761, "admin": 9102}
BOOT_DEADLINE = 600  # s: a cold TCG boot on a busy 2-core host


class Vm:
    def __init__(self, image, work, share, name):
        self.image = Path(image).resolve()
        self.work = Path(work).resolve()
        self.share = Path(share)
        self.name = name
        self.ports = {k: free_port() for k in GUEST_PORTS}
        self.proc = None
        self.console = self.work / f"{name}-console.log"
        self.overlay = self.work / f"{name}-overlay.qcow2"
        self.control = self.work / f"ssh-{name}"

    # -- lifecycle ---------------------------------------------------------

    def boot(self):
        """Starts QEMU and waits for SSH; returns the seconds it took."""
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(self.image / "rootfs.img"), str(self.overlay)], check=True)
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{self.ports[k]}-:{GUEST_PORTS[k]}" for k in GUEST_PORTS)
        cmd = [
            "qemu-system-x86_64", "-name", self.name,
            "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 quiet",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2",
            "-netdev", f"user,id=n0,{fwd}",
            # romfile=: no iPXE option ROM (we boot the kernel directly).
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-virtfs", f"local,path={self.share},mount_tag=share,security_model=none",
            "-serial", f"file:{self.console}", "-display", "none", "-no-reboot",
        ]
        start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / f"{self.name}-qemu.log", "w"))
        log(f"qemu pid {self.proc.pid}, ports {self.ports}")
        deadline = start + BOOT_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"qemu exited with {self.proc.returncode}: {self._tail()}")
            if self.ssh("true", check=False, timeout=30).returncode == 0:
                return time.monotonic() - start
            time.sleep(2)
        raise CheckFailed(f"no SSH within {BOOT_DEADLINE} s: {self._tail()}")

    def poweroff(self, timeout=180):
        """Powers the guest off cleanly (QEMU exits: -no-reboot)."""
        self.ssh("systemctl poweroff", check=False, timeout=30)
        self._close_ssh()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(f"the guest did not power off within {timeout} s")

    def kill(self):
        """Ends QEMU by its pid (the trap on every exit path)."""
        self._close_ssh()
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _close_ssh(self):
        if self.control.exists():
            subprocess.run(self._ssh_base() + ["-O", "exit", "root@127.0.0.1"],
                           capture_output=True, timeout=10)

    def _tail(self):
        try:
            return "console: ..." + self.console.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no console log)"

    # -- commands ----------------------------------------------------------

    def _ssh_base(self):
        return ["ssh", "-i", str(self.image / "id_ed25519"), "-p", str(self.ports["ssh"]),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=8",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=900"]

    def ssh(self, script, check=True, timeout=120, stdin=None):
        """Runs a bash script in the guest as root; returns CompletedProcess."""
        cmd = self._ssh_base() + ["root@127.0.0.1", "bash -c " + shlex.quote("set -euo pipefail\n" + script)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL if stdin is None else None, input=stdin)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"guest command timed out after {timeout} s: {script[:200]}")
        if check and p.returncode != 0:
            raise CheckFailed(f"guest command failed ({p.returncode}): {script[:300]}\n"
                              f"{p.stdout[-1500:]}{p.stderr[-1500:]}")
        return p

    def out(self, script, **kw):
        return self.ssh(script, **kw).stdout.strip()

    def show(self, unit, *props):
        """systemctl show UNIT -p ...: a dict."""
        text = self.out(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def now(self):
        """The guest's clock (for journalctl --since)."""
        return self.out("date +%s.%N")

    def journal(self, since, args="-u dicomgate.service"):
        return self.out(f"journalctl --no-pager -o short-unix --since @{since} {args}")

    def wait(self, script, what, timeout=120, interval=0.5):
        """Polls until the guest script exits 0."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ssh(script, check=False, timeout=60).returncode == 0:
                return
            time.sleep(interval)
        raise CheckFailed(f"{what}: not within {timeout} s")

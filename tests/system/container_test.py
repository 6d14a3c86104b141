#!/usr/bin/env python3
"""System test: the shipped Dockerfile, built with podman and run with the
documented layout (docs/operations.md, "Container"; deploy/container/config.yaml).

No container registry is reachable here, so the images the Dockerfile names
in FROM are stood in by local images of the same names, built from Debian's
packages with mmdebstrap and `podman import`: debian:bookworm-slim (minbase),
and rust:1-bookworm (build tools plus this machine's Rust toolchain, and
this machine's CA certificates, since its outbound TLS is re-signed by a
local authority and cargo must download crates). The Dockerfile itself is
built unchanged. A third local image with DCMTK plays the PACS.

podman runs as root with a private configuration (CONTAINERS_CONF and
friends, all under target/system-test/podman/): runtime runc (crun fails on
this host's hybrid cgroups), cgroupfs, and ulimits within the host's hard
limits (it lacks CAP_SYS_RESOURCE). Everything it creates is named dg-sys-*
and removed on exit; the stand-in images stay as a cache, keyed by a hash of
their package lists.

Usage: container_test.py REPO_DIR CACHE_DIR WORK_DIR
"""

import atexit
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).parent))
from sysutil import (CheckFailed, Report, batch_storescu, echoscu, free_port, http_get, log,  # noqa: E402
                     main_guard, make_dicom_files, metric, require, run, storescu)

SUITE = "bookworm"
IMAGE = "localhost/dg-sys-dicomgate:test"
GW = "dg-sys-gw"
PACS = "dg-sys-pacs"
STATE = "dg-sys-state"
GRACE = 60  # shutdown.grace_period's default
# The stand-ins: (image name, mmdebstrap --include, what else goes in).
STANDINS = {
    "docker.io/library/debian:bookworm-slim": [],
    "docker.io/library/rust:1-bookworm": ["build-essential", "ca-certificates", "git", "pkg-config", "curl"],
    "localhost/dg-sys-dcmtk:latest": ["dcmtk"],
}
# Bump when _standin() changes what goes into an image.
STANDIN_RECIPE = 3
# debian:bookworm-slim's /etc/apt/apt.conf.d/docker-clean (debuerreotype).
DOCKER_CLEAN = [
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };',
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };',
    'Dir::Cache::pkgcache "";',
    'Dir::Cache::srcpkgcache "";',
]
SLIM_EXCLUDES = ["/usr/share/man/*", "/usr/share/groff/*", "/usr/share/info/*", "/usr/share/lintian/*",
                 "/usr/share/linda/*", "/usr/share/locale/*", "/var/cache/man/*"]
RUST_ENV = ["ENV CARGO_HOME=/usr/local/cargo", "ENV RUSTUP_HOME=/usr/local/rustup",
            "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


class ContainerTest:
    def __init__(self, repo, cache, work):
        self.repo = Path(repo)
        self.cache = Path(cache)
        self.work = Path(work)
        self.report = Report("container")
        self.figures = {}
        self.env = self._podman_env()
        self.files = make_dicom_files(self.work)
        self.ports = {"store": free_port(), "admin": free_port()}
        self.cert = None

    # -- podman with a private configuration ---------------------------------

    def _podman_env(self):
        d = self.cache / "podman"
        for sub in ("storage", "run", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nofile = min(65536, hard_nofile) if hard_nofile > 0 else 65536
        nproc = min(32768, hard_nproc) if hard_nproc > 0 else 32768
        (d / "containers.conf").write_text(f"""\
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
""")
        (d / "storage.conf").write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{d / 'storage'}"
runroot = "{d / 'run'}"
""")
        (d / "registries.conf").write_text('unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n')
        env = dict(os.environ)
        env.update(CONTAINERS_CONF=str(d / "containers.conf"), CONTAINERS_STORAGE_CONF=str(d / "storage.conf"),
                   CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
                   # buildah keeps RUN --mount=type=cache directories under TMPDIR.
                   TMPDIR=str(d / "tmp"))
        return env

    def podman(self, *args, timeout=120, check=True):
        return run(["podman", *args], timeout=timeout, check=check, env=self.env)

    def cleanup(self):
        for name in (GW, PACS):
            self.podman("rm", "-f", "-t", "0", name, check=False)
        self.podman("volume", "rm", "-f", STATE, check=False)

    # -- the stand-in base images ------------------------------------------------

    def _mirror(self):
        uri = ""
        for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
            for line in f.read_text().splitlines():
                if line.startswith("URIs:") and "security" not in line:
                    uri = uri or line.split()[1]
        return (os.environ.get("DG_SYS_MIRROR") or uri or "http://deb.debian.org/debian").rstrip("/")

    def _standin(self, name, include, key):
        mirror = self._mirror()
        security = mirror.rsplit("/debian", 1)[0] + "/debian-security"
        cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--quiet", "--format=tar",
               "--aptopt=Apt::Install-Recommends \"false\""]
        if include:
            cmd.append("--include=" + ",".join(include))
        changes = [f"LABEL dg-sys.key={key}", 'CMD ["bash"]']
        if "slim" in name:
            # What makes Debian's image "slim" (debuerreotype's slimify):
            # no documentation, manuals or translations, so that the image
            # size measured here is close to the real one.
            cmd += [f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES]
            cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--customize-hook=cd \"$1\" && rm -rf " + " ".join(p.lstrip("/") for p in SLIM_EXCLUDES)
                    + " && rm -f usr/share/doc/*/changelog* usr/share/doc/*/NEWS* usr/share/doc/*/README*"
                    + " var/cache/apt/*.bin var/log/*.log var/log/apt/* var/cache/debconf/*-old",
                    # The real image's apt settings: no package caches left in
                    # a layer (apt-get update in the Dockerfile would otherwise
                    # leave ~80 MB of /var/cache/apt/*.bin in the image).
                    "--customize-hook=printf '%s\\n' " + " ".join(f"'{line}'" for line in DOCKER_CLEAN)
                    + " >\"$1/etc/apt/apt.conf.d/docker-clean\""]
        if "rust" in name:
            sysroot = run(["rustc", "--print", "sysroot"]).stdout.strip()
            tc = "/usr/local/rustup/toolchains/" + Path(sysroot).name
            # The toolchain without its documentation; cargo and rustc where
            # rust:1-bookworm has them (CARGO_HOME/bin on PATH).
            cmd += [f'--customize-hook=mkdir -p "$1{tc}" "$1/usr/local/cargo/bin" && '
                    f'tar -C "{sysroot}" --exclude=./share -c . | tar -C "$1{tc}" -x && '
                    f'for b in "$1{tc}"/bin/*; do ln -s "{tc}/bin/$(basename "$b")" "$1/usr/local/cargo/bin/"; done',
                    # The machine's CA bundle (its outbound TLS is re-signed locally).
                    '--customize-hook=cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"']
            changes += RUST_ENV
        cmd += ["--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/archives/*.deb",
                SUITE, "-", f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main",
                f"deb {security} {SUITE}-security main"]
        imp = ["podman", "import"]
        for c in changes:
            imp += ["--change", c]
        imp += ["-", name]
        debootstrap = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        imported = subprocess.run(imp, stdin=debootstrap.stdout, capture_output=True, text=True, env=self.env,
                                  timeout=1800)
        debootstrap.stdout.close()
        err = debootstrap.stderr.read().decode(errors="replace")
        rc = debootstrap.wait()
        if rc != 0 or imported.returncode != 0:
            raise CheckFailed(f"stand-in {name}: mmdebstrap {rc}: {err[-1500:]} / podman import: {imported.stderr[-800:]}")

    def standins(self):
        """Builds the stand-ins whose key changed, in parallel."""
        rustc = run(["rustc", "--version"]).stdout.strip()
        todo, threads, errors = [], [], []
        for name, include in STANDINS.items():
            # Rebuilt when its package list, the recipe, the mirror or (for
            # the builder) the host's toolchain changes.
            recipe = repr((name, include, STANDIN_RECIPE, self._mirror(), rustc if "rust" in name else ""))
            key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
            have = self.podman("image", "inspect", "--format", '{{index .Labels "dg-sys.key"}}', name, check=False)
            if have.returncode == 0 and have.stdout.strip() == key:
                continue
            todo.append(name)

            def build(name=name, include=include, key=key):
                try:
                    self._standin(name, include, key)
                except Exception as e:  # reported below
                    errors.append(str(e))
            threads.append(threading.Thread(target=build))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        require(not errors, "\n".join(errors))
        self.podman("image", "prune", "-f", check=False)
        took = time.monotonic() - t0
        self.figures["standins_s"] = took
        return f"built {', '.join(todo)} in {took:.0f} s" if todo else "cached"

    # -- the checks ----------------------------------------------------------------

    def build(self):
        t0 = time.monotonic()
        # --format docker keeps HEALTHCHECK (OCI has no such field); --pull=never:
        # the FROM images are the stand-ins; --network=host: apt and cargo
        # reach the registries as this machine does.
        p = self.podman("build", "--pull=never", "--network=host", "--format", "docker", "-t", IMAGE,
                        "-f", str(self.repo / "Dockerfile"), str(self.repo), timeout=3600, check=False)
        took = time.monotonic() - t0
        (self.work / "build.log").write_text(p.stdout + p.stderr)
        require(p.returncode == 0, f"podman build failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
        size = int(self.podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
        base = int(self.podman("image", "inspect", "--format", "{{.Size}}",
                               "docker.io/library/debian:bookworm-slim").stdout.strip())
        user = self.podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()
        require(user == "10001:10001", f"the image's USER is {user!r}")
        self.figures["build_s"] = took
        self.figures["image_mb"] = size / 1e6
        self.figures["added_mb"] = (size - base) / 1e6
        return (f"Dockerfile built unchanged in {took:.0f} s; image {size / 1e6:.0f} MB, of which the "
                f"Dockerfile's layers {(size - base) / 1e6:.0f} MB over the slim stand-in; USER {user}")

    def start(self):
        self.cleanup()
        net = self.podman("network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
        self.gateway = net.stdout.strip()
        require(re.fullmatch(r"[0-9.]+", self.gateway), f"podman's default network gateway: {self.gateway!r}")
        # The PACS: storescp in a container of its own on the same network.
        self.podman("run", "-d", "--name", PACS, "-e", "TCP_NODELAY=1", "localhost/dg-sys-dcmtk:latest",
                    "storescp", "-aet", "PACS", "-od", "/tmp", "-dhl", "11112")
        pacs_ip = self.podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", PACS).stdout.strip()
        # The documented layout: the configuration directory for UID 10001,
        # the file readable by it alone, mounted read-only.
        etc = self.work / "etc"
        etc.mkdir(mode=0o750)
        os.chown(etc, 10001, 10001)
        config = (self.repo / "deploy/container/config.yaml").read_text()
        # What the admin fills in: the PACS, and the cloud's address, which
        # is this host: through the published port it is the bridge's gateway.
        config = config.replace("pacs.fill-in.invalid:104", f"{pacs_ip}:11112")
        config = config.replace("worklist.fill-in.invalid:107", f"{pacs_ip}:11112")
        config = config.replace("34.203.166.92/32", f"{self.gateway}/32")
        (etc / "config.yaml").write_text(config)
        os.chown(etc / "config.yaml", 10001, 10001)
        os.chmod(etc / "config.yaml", 0o600)
        self.podman(
            "run", "-d", "--name", GW, "--stop-timeout", "90",
            # A read-only root file system, without podman's default tmpfs on
            # /tmp, /run, /var/tmp (Docker's --read-only has none either).
            "--read-only", "--read-only-tmpfs=false",
            "-p", f"127.0.0.1:{self.ports['store']}:2762", "-p", f"127.0.0.1:{self.ports['admin']}:9102",
            "-v", f"{etc}:/etc/dicomgate:ro", "-v", f"{STATE}:/var/lib/dicomgate", IMAGE)
        t0 = time.monotonic()
        status = 0
        while time.monotonic() - t0 < 60:
            try:
                status, _ = http_get(self.ports["admin"], "/readyz")
            except OSError:
                status = 0
            if status in (200, 403):
                break
            state = self.podman("inspect", "--format", "{{.State.Status}}", GW).stdout.strip()
            require(state == "running", lambda: f"the container is {state}:\n{self.logs()[-2000:]}")
            time.sleep(0.5)
        require(status == 200, lambda: f"/readyz from the host through the published port: {status}\n{self.logs()[-1500:]}")
        self.figures["start_to_ready_s"] = time.monotonic() - t0
        return (f"/readyz 200 from the host (it arrives from {self.gateway}, in the documented admin.allow) "
                f"{time.monotonic() - t0:.1f} s after podman run")

    def logs(self):
        p = self.podman("logs", GW, check=False)
        return p.stdout + p.stderr

    def tls_echo(self):
        pem = self.podman("exec", GW, "cat", "/var/lib/dicomgate/scp_cert.pem").stdout
        require("BEGIN CERTIFICATE" in pem, "no certificate generated in the state volume")
        self.cert = self.work / "scp_cert.pem"
        self.cert.write_text(pem)
        e = echoscu("127.0.0.1", self.ports["store"], self.cert)
        require(e.returncode == 0, f"echoscu over TLS (pinned) through the published port:\n{e.stdout}{e.stderr}")
        s = storescu("127.0.0.1", self.ports["store"], self.files["image"], self.cert)
        require(s.returncode == 0, f"storescu over TLS:\n{s.stdout}{s.stderr}")
        audit = [ln for ln in self.logs().splitlines() if "connection ended" in ln and 'outcome="forwarded"' in ln]
        require(len(audit) >= 2, f"{len(audit)} audit lines for 2 associations")
        return f"C-ECHO and C-STORE accepted over TLS with the generated certificate pinned; peer {self.gateway}"

    def non_root_read_only(self):
        pid = self.podman("inspect", "--format", "{{.State.Pid}}", GW).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        require(set(uids) == {"10001"} and set(gids) == {"10001"}, f"the gateway runs as uid {uids} gid {gids}")
        cap = int(re.search(r"^CapEff:\s+(\S+)", status, re.M).group(1), 16)
        require(cap == 0, f"effective capabilities {cap:#x}")
        w = self.podman("exec", GW, "bash", "-c", "echo x >/etc/dg-sys-probe", check=False)
        require(w.returncode != 0 and "Read-only file system" in w.stderr, f"the root file system is writable: {w.stderr}")
        w = self.podman("exec", GW, "bash", "-c", "echo x >/tmp/dg-sys-probe", check=False)
        require(w.returncode != 0, "/tmp is writable (expected no tmpfs)")
        st = self.podman("exec", GW, "stat", "-c", "%a %u", "/var/lib/dicomgate/scp_key.pem").stdout.strip()
        require(st == "600 10001", f"the generated key in the state volume is {st}")
        return "uid/gid 10001, no capabilities; / and /tmp read-only; the key generated into the state volume (0600)"

    def healthcheck(self):
        h = self.podman("healthcheck", "run", GW, check=False)
        require(h.returncode == 0, f"the image's HEALTHCHECK failed: {h.stdout}{h.stderr}")
        return "the Dockerfile's HEALTHCHECK (bash /dev/tcp GET /healthz) passes"

    def reload(self):
        self.podman("kill", "-s", "HUP", GW)
        end = time.monotonic() + 30
        while "configuration reloaded" not in self.logs():
            require(time.monotonic() < end, "no 'configuration reloaded' after SIGHUP")
            time.sleep(0.5)
        return "SIGHUP (podman kill -s HUP): configuration reloaded"

    def stop_drains(self):
        # One association with many objects, live when the stop comes.
        scu = batch_storescu("127.0.0.1", self.ports["store"], self.files["image"], self.cert, self.work, 3000)
        end = time.monotonic() + 60
        while metric(http_get(self.ports["admin"], "/metrics")[1], "dicomgate_active_connections",
                     {"listener": "store"}) < 1:
            require(scu.poll() is None, lambda: f"storescu ended before the stop: {scu.stdout.read()[-800:]}")
            require(time.monotonic() < end, "the batch association did not start")
            time.sleep(0.05)
        t0 = time.monotonic()
        self.podman("stop", GW, timeout=150)
        took = time.monotonic() - t0
        out, _ = scu.communicate(timeout=120)
        state = self.podman("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", GW).stdout.split()
        logs = self.logs()
        require(scu.returncode == 0, f"the live association did not complete (storescu {scu.returncode}):\n{out[-800:]}")
        require(state == ["0", "exited"], f"container state after stop: {state}")
        require(re.search(r"stopped accepting; draining live associations live=1", logs),
                "no drain of 1 live association in the log")
        require("dicomgate stopped" in logs, "no 'dicomgate stopped' in the log")
        require(took < GRACE, f"podman stop took {took:.1f} s, more than the grace period")
        self.figures["stop_s"] = took
        return f"podman stop during a 3,000-object association: it completed, exit code 0, in {took:.1f} s"

    def run(self):
        r = self.report
        r.run("stand-in-images", self.standins, fatal=True)
        r.run("build", self.build, fatal=True)
        r.run("readyz-from-host", self.start, fatal=True)
        r.run("tls-echo", self.tls_echo)
        r.run("non-root-read-only", self.non_root_read_only)
        r.run("healthcheck", self.healthcheck)
        r.run("reload", self.reload)
        r.run("stop-drains", self.stop_drains)
        log("figures: " + ", ".join(f"{k}={v:.1f}" for k, v in self.figures.items()))
        return r.finish()


def main():
    repo, cache, work = sys.argv[1:4]
    test = ContainerTest(repo, cache, work)

    # The built image stays in the private storage under target/ (like the
    # stand-ins): a re-run with unchanged sources reuses its layers.
    atexit.register(test.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that atexit runs
    return test.run()


if __name__ == "__main__":
    main_guard(main)

# syntax=docker/dockerfile:1
#
# dicomgate container image (docs/operations.md, "Container").
#   docker build -t dicomgate .
#   docker run -d --name dicomgate --stop-timeout 90 --read-only \
#     -p 2761:2761 -p 2762:2762 -p 127.0.0.1:9102:9102 \
#     -v /srv/dicomgate/etc:/etc/dicomgate:ro -v dicomgate-state:/var/lib/dicomgate \
#     dicomgate
# Start the container's config.yaml from deploy/container/config.yaml: the
# admin endpoint on 0.0.0.0:9102 with the bridge's gateway address (the host,
# as the container sees it through a published port) in admin.allow, so that
# Prometheus on the host gets /metrics and /readyz; files the gateway writes
# (generate_if_missing) under /var/lib/dicomgate. scripts/system-test.sh
# builds this file with podman and runs it that way.

# ---- build: the release profile ([profile.release] in Cargo.toml), the same
# binary scripts/build-package.sh puts in the .deb, on the same Debian release
# as the runtime image, so the binary's glibc matches.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and target/ between builds; target/
# is not part of the image, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dicomgate \
    && install -m 0755 target/release/dicomgate /usr/local/bin/dicomgate

# ---- runtime: Debian slim, no compiler, no shell tools beyond the base.
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="dicomgate" \
      org.opencontainers.image.description="DICOM-TLS termination gateway: allow list, AE-title policy, routing to internal PACS/MWL" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: for backends whose TLS is verified against public roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed non-root UID/GID, so that host-side files in the volumes can be
# prepared for it: `chown -R 10001:10001` and private keys mode 0600.
RUN groupadd --system --gid 10001 dicomgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dicomgate \
       --no-create-home --shell /usr/sbin/nologin dicomgate \
    && install -d -o dicomgate -g dicomgate -m 0750 /etc/dicomgate \
    && install -d -o dicomgate -g dicomgate -m 0700 /var/lib/dicomgate

COPY --from=build /usr/local/bin/dicomgate /usr/local/bin/dicomgate

USER 10001:10001
WORKDIR /var/lib/dicomgate
VOLUME ["/etc/dicomgate", "/var/lib/dicomgate"]
# 2762 store, 2761 worklist (the connector guide's ports), 9102 admin endpoint.
EXPOSE 2761 2762 9102

# GET /healthz over bash's /dev/tcp: bash, head and grep are part of every
# Debian base image, so the check needs no curl (and no extra attack surface
# in the image). The admin port can be changed with DICOMGATE_ADMIN_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${DICOMGATE_ADMIN_PORT:-9102} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q '^HTTP/1\\.[01] 200 '"]

# SIGTERM drains live associations for shutdown.grace_period (default 60s):
# give `docker stop` more than that (--stop-timeout 90, or compose's
# stop_grace_period: 90s). SIGHUP reloads: `docker kill -s HUP dicomgate`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dicomgate"]
CMD ["run", "--config", "/etc/dicomgate/config.yaml"]

# syntax=docker/dockerfile:1.7
#
# One image for every CLS process: the service binaries and the `cls` CLI. The compose service's
# `command` picks the binary (compose/docker-compose.yml). Build from the repository root:
#
#   docker build -t cls:local .
#
# Dependency caching uses BuildKit cache mounts (cargo registry, git checkouts and target/), not
# cargo-chef: no extra tool or recipe stage to keep in step with the workspace, and the cached
# target/ also keeps our own crates' incremental state, so a one-line change rebuilds in the time
# `cargo build --release` takes locally. The cost: the cache lives in the builder, not in image
# layers, so an ephemeral CI builder starts cold (cargo-chef with a registry layer cache is the
# better fit there).
#
# scripts/check-compose.sh checks this file without a Docker engine: every COPY source exists and
# is not in .dockerignore, BINS lists exactly the workspace's binaries, the Rust image is at least
# the workspace's rust-version, and the `cargo build` line below runs (in the dev profile).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The workspace: every member's manifest and sources (cargo loads all members, the tests crate
# included). Migrations are compiled in (`sqlx::migrate!` in cls-store), so the runtime image
# needs no migrations directory.
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY services services
COPY tests tests
COPY migrations migrations
# The binaries the runtime image carries: every bin target of the workspace.
ARG BINS="cls cls-gateway cls-query cls-brands-worker cls-licenses-worker cls-activations-worker"
# target/ is a cache mount, so the binaries are copied out within the same RUN.
RUN --mount=type=cache,id=cls-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cls-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=cls-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && for bin in ${BINS}; do cp "target/release/${bin}" /out/; done

FROM ${RUNTIME_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to the service (which drains within CLS_SHUTDOWN_TIMEOUT_MS)
# and reaps zombies. No TLS library or CA bundle: no CLS dependency speaks TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 cls \
    && useradd --system --uid 10001 --gid cls --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cls
COPY --from=builder /out/ /usr/local/bin/
# The container health probe (the image has no curl): `cls-probe PORT PATH`.
COPY --chmod=0755 compose/cls-probe /usr/local/bin/cls-probe
# Numeric, so orchestrators that require a non-root user can verify it without /etc/passwd.
USER 10001:10001
# Gateway (public), query service (internal), ops listener (health, readiness, metrics).
EXPOSE 8080 8081 9100
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["cls", "--help"]

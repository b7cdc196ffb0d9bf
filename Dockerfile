# syntax=docker/dockerfile:1
#
# cloudbase-gateway: a release build on the Rust image, run as a non-root user on a slim
# Debian with the CA roots (CloudBase and https:// upstreams are verified against them).
#
#   docker build -t cloudbase-gateway .
#   docker run -v $PWD/config.toml:/etc/cloudbase-gateway/config.toml:ro -p 8080:8080 cloudbase-gateway
#
# The same image runs the CloudBase Auth v2 emulator: append
# `emulator --listen 0.0.0.0:8081 --config /etc/cloudbase-gateway/emulator.toml`
# (see docker-compose.yml).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other members: the CloudBase client and the emulator the binary embeds.
COPY crates ./crates
# Cargo.toml declares the benches; the manifest does not load without them.
COPY benches ./benches
# Registry and target caches survive between builds; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cloudbase-gateway \
    && cp target/release/cloudbase-gateway /usr/local/bin/cloudbase-gateway

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/cloudbase-gateway
COPY --from=build /usr/local/bin/cloudbase-gateway /usr/local/bin/cloudbase-gateway
USER 10001:10001
# 8080: the proxy; 9090: admin (/healthz /readyz /metrics /cache/purge), keep it private.
EXPOSE 8080 9090
# SIGTERM (docker stop) drains in-flight requests for shutdown_grace_period, then exits 0;
# give `docker stop -t` at least that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cloudbase-gateway", "--config", "/etc/cloudbase-gateway/config.toml"]

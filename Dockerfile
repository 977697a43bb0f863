# syntax=docker/dockerfile:1
# rooms-sync: one static-ish binary on a slim Debian base, running as a non-root numeric user.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, against a placeholder crate: this layer is reused until Cargo.toml or
# Cargo.lock change, so code-only changes rebuild in seconds rather than minutes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/ingest.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rooms-sync /usr/local/bin/rooms-sync
# Configuration comes from the environment (same key names as RoomsAppSettings.config), or from
# a file mounted and named by ROOMS_APPSETTINGS.
ENV ListenAddress=0.0.0.0:8080 \
    AdminListenAddress=0.0.0.0:9090 \
    LogFormat=json
USER 10001:10001
# 8080: webhook and /healthz (publish through the reverse proxy); 9090: /metrics (keep private).
EXPOSE 8080 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/rooms-sync", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/rooms-sync"]
CMD ["serve"]

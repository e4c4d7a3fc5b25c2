# syntax=docker/dockerfile:1
# The gateway as a container image: build with the dist profile, then a slim runtime with
# only the binary, CA certificates and a non-root user. See README "Install".
#   docker build -t orcastrate-gateway .
#   docker run -p 8080:8080 -p 1883:1883 -v orcastrate-data:/var/lib/orcastrate-gateway \
#     -e GITHUB_SECRET=... -e TOKENS=... -e TRUSTED_NAMES=... -e ORCASTRATE_ADMIN_TOKEN=... \
#     -e ORCASTRATE_REPOS=octo-org/web@main=production orcastrate-gateway

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep crates.io downloads and build output between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist -p orcastrate-gateway --bin orcastrate-gateway \
    && install -D -m 0755 target/dist/orcastrate-gateway /out/orcastrate-gateway

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/orcastrate-gateway \
        --shell /usr/sbin/nologin orcastrate \
    && install -d -m 0700 -o orcastrate -g orcastrate /var/lib/orcastrate-gateway
COPY --from=build /out/orcastrate-gateway /usr/bin/orcastrate-gateway
# The ledger and the order-signing key agents trust: keep this volume.
VOLUME /var/lib/orcastrate-gateway
# PORT replaces the HTTP port (webhooks, /healthz, /metrics, admin API); 1883 is MQTT.
ENV ORCASTRATE_DATA_DIR=/var/lib/orcastrate-gateway \
    ORCASTRATE_HTTP_LISTEN=0.0.0.0:8080 \
    ORCASTRATE_MQTT_LISTEN=0.0.0.0:1883
EXPOSE 8080 1883
USER orcastrate
WORKDIR /var/lib/orcastrate-gateway
# GET /healthz over bash's /dev/tcp: no curl in the image. (Plain HTTP only.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/bin/orcastrate-gateway"]
CMD ["serve"]

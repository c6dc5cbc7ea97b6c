# Vitrine: multi-stage build. The builder compiles the release binary (protoc
# and librdkafka come vendored from crates, so no system libraries are
# needed); the runtime is a slim Debian with a non-root user.
#
#   docker build -t vitrine .
#   docker run --rm -p 50051:50051 -p 9898:9898 vitrine serve --demo

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY engine engine
COPY proto proto
COPY benches benches
COPY loadtest loadtest
RUN cargo build --release --locked -p vitrine

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/vitrine --create-home vitrine
COPY --from=builder /src/target/release/vitrine /usr/local/bin/vitrine
COPY --chown=vitrine:vitrine rules /var/lib/vitrine/rules
# Durable state (claims and events journals, snapshots, rule revisions):
# mount a volume here, or a restart loses it with the container.
RUN mkdir -p /var/lib/vitrine/data && chown vitrine:vitrine /var/lib/vitrine/data
VOLUME /var/lib/vitrine/data
USER vitrine
WORKDIR /var/lib/vitrine
ENV VITRINE_GRPC_ADDR=0.0.0.0:50051 \
    VITRINE_METRICS_ADDR=0.0.0.0:9898 \
    VITRINE_RULES_DIR=/var/lib/vitrine/rules \
    VITRINE_DATA_DIR=/var/lib/vitrine/data
EXPOSE 50051 9898
# The binary checks itself (the slim image has no curl): gRPC health of
# vitrine.v1.Decision on VITRINE_GRPC_ADDR (a wildcard host is asked on
# loopback); exit 0 SERVING, 1 not serving, 2 unreachable, folded into 1
# because Docker reserves 2. The start period covers restoring a snapshot
# and replaying the journals (and the topics).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD /usr/local/bin/vitrine health --timeout 2s || exit 1
ENTRYPOINT ["/usr/local/bin/vitrine"]
CMD ["serve"]

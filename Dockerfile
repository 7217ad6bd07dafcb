# syntax=docker/dockerfile:1
# The registrar operator image: a static-ish Rust binary on distroless (glibc + libgcc, CA
# certificates, no shell), running as the distroless "nonroot" user 65532.
#
#   docker build -t registrar:0.1.0 .

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
# etcd-client and the gRPC test protos are compiled with protoc at build time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to load it.
COPY . .
# Cache mounts keep the crate registry and build artifacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin registrar \
 && install -D -m 0755 target/release/registrar /out/registrar

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/registrar /registrar
USER 65532:65532
# Admin HTTP: /healthz, /readyz, /metrics.
EXPOSE 8080
ENTRYPOINT ["/registrar"]
CMD ["run"]

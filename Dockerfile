# syntax=docker/dockerfile:1
# The registrar operator image: a Rust binary on distroless (glibc + libgcc, CA certificates, no
# shell), running as the distroless "nonroot" user 65532.
#
#   docker build -t registrar:0.1.0 .
#
# The base images are build arguments. Where they cannot be pulled, hack/image.sh builds
# stand-ins from Debian packages and passes them:
#   podman build --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=... .

ARG RUST_VERSION=1
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
# etcd-client and the gRPC test protos are compiled with protoc and the well-known types
# (google/protobuf/*.proto, in libprotobuf-dev) at build time. A builder that already has both,
# like the stand-in, needs no package index.
# hadolint ignore=DL3008
RUN if ! command -v protoc >/dev/null \
      || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to load it.
COPY . .
# Cache mounts keep the crate registry and build artifacts between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin registrar \
 && install -D -m 0755 target/release/registrar /out/registrar

FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/registrar /registrar
USER 65532:65532
# Admin HTTP: /healthz, /readyz, /metrics.
EXPOSE 8080
ENTRYPOINT ["/registrar"]
CMD ["run"]

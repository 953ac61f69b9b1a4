# One image for every role: `ferry operator | gateway | dispatcher | forwarder`.
# Build: docker build --build-arg VERSION=0.1.0 -t ghcr.io/ferry-dev/ferry:0.1.0 .

# The Rust release rust-toolchain.toml pins.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds; the binary is copied
# out because the target directory is not part of the layer. The release profile strips it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ferry \
    && cp target/release/ferry /usr/local/bin/ferry

# distroless/cc: glibc, libgcc and CA certificates, no shell or package manager; user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
# The version the image is tagged with (Cargo.toml's and the chart's appVersion).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Serves machine-learning models as endpoints on Kubernetes and delivers their results to callback URLs" \
      org.opencontainers.image.source="https://github.com/ferry-dev/ferry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]

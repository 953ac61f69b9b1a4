# One image for every role: `ferry operator | gateway | dispatcher | forwarder`.
# Build: docker build -t ghcr.io/ferry-dev/ferry:0.1.0 .

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds; the binary is copied
# out because the target directory is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ferry \
    && cp target/release/ferry /usr/local/bin/ferry

# distroless/cc: glibc, libgcc and CA certificates, no shell or package manager; user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]

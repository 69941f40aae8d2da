# The tollgate image: one binary (proxy, control, inject, …) on a distroless
# runtime, run as nonroot (65532). No container engine runs on the project's
# machines, so CI does not build the image; it runs this file's build-stage
# commands as plain commands instead (.ci/image-build-stage).
#   docker build -t ghcr.io/tollgate-dev/tollgate:0.1.0 .

FROM rust:1.95-bookworm AS build
# cmake for libz-ng-sys; gcc and make (jemalloc) come with the image.
RUN apt-get update && apt-get install -y --no-install-recommends cmake
WORKDIR /src
COPY . .
ARG OUT=/out
# PGO=1 (the default): profile-guided build, trained on the dataplane
# bench's fake provider (deploy/build-release, ~30 min; README, "Release
# build"). PGO=0: a plain release build. (.ci/image-build-stage runs this
# line with PGO unset: the plain build, to keep CI short.)
ARG PGO=1
RUN if [ "${PGO:-0}" = 1 ]; then apt-get install -y --no-install-recommends wrk python3 curl && rustup component add llvm-tools && bin=$(deploy/build-release | tail -n 1); else cargo build --release --locked --bin tollgate && bin=target/release/tollgate; fi && install -D -m 0755 "$bin" "$OUT/tollgate" && "$OUT/tollgate" --version

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="LLM cost-control sidecar"
COPY --from=build /out/tollgate /usr/local/bin/tollgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["proxy"]

# syntax=docker/dockerfile:1
# The dedup2d image: one static musl binary on an empty base, run as 65532:65532.
# `hack/image.sh build` makes the same image without a daemon (umoci); `hack/image.sh
# dockerfile-check` builds this file with buildah from a local base image. docs/image.md has both.
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u -d @"$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)" -t dedup2d .

# Any Debian-based Rust 1.95 image; without a registry, pass a local one (oci:/path:tag).
ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm

FROM ${BUILDER_IMAGE} AS build
ARG TARGET=x86_64-unknown-linux-musl
ARG CARGO_AUDITABLE_VERSION=0.7.7
# Each tool is fetched only if the base image lacks it (a prepared local base has them all).
# /rootfs: the file system of the final image, the same list hack/image.sh writes; its CA bundle is
# Debian's Mozilla set only, never the builder's local CAs.
RUN set -eu; \
    command -v musl-gcc >/dev/null || { apt-get update; apt-get install -y --no-install-recommends musl-tools; }; \
    test -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" || rustup target add "$TARGET"; \
    command -v cargo-auditable >/dev/null || cargo install --locked cargo-auditable --version "$CARGO_AUDITABLE_VERSION"; \
    mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp; \
    chmod 1777 /rootfs/tmp; \
    find /usr/share/ca-certificates/mozilla -name '*.crt' | LC_ALL=C sort | xargs sed -s -e '$a\' \
      >/rootfs/etc/ssl/certs/ca-certificates.crt; \
    printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >/rootfs/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group
WORKDIR /src
COPY . .
# The revision goes into `dedup2d --version` and the labels; empty means "not given".
ARG REVISION=
ARG CARGO_BUILD_JOBS=
# Cache mounts keep the registry and the target dir between builds: a rebuild is incremental.
RUN --mount=type=cache,id=dedup2d-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=dedup2d-musl-target,target=/src/target \
    set -eu; \
    export DEDUP2D_GIT_REVISION="$REVISION" CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_STRIP=symbols; \
    [ -n "$CARGO_BUILD_JOBS" ] || unset CARGO_BUILD_JOBS; \
    cargo auditable build --release --locked --target "$TARGET"; \
    install -m 0755 "target/$TARGET/release/dedup2d" /rootfs/dedup2d

FROM scratch
COPY --from=build /rootfs/ /
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=
ARG SOURCE=https://github.com/dedup2d/dedup2d
LABEL org.opencontainers.image.title="dedup2d" \
      org.opencontainers.image.description="Kubernetes operator that rolls dedup2d from file_bytes_b64 to file_ref payloads, plus a wire-compatible worker and API" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["/dedup2d"]

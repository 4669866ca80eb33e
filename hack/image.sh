#!/usr/bin/env bash
# hack/image.sh — the dedup2d container image, built and run without a container daemon.
#
#   hack/image.sh build [OUT]        static musl binary (`cargo auditable`, stripped) packed with umoci into
#                                    the OCI layout OUT/layout (tag = crate version) and the OCI archive
#                                    OUT/dedup2d-oci.tar; reproducible: same commit => same bytes.
#   hack/image.sh check [OUT]        CI: build twice and compare digests, assert the image config, then run
#                                    the image under runc (read-only root, uid 65532): `--version`, and
#                                    `worker` against a real redis-server until /healthz answers 200.
#   hack/image.sh dockerfile-check   build ./Dockerfile with buildah (chroot isolation, vfs storage, local
#                                    base image, no registry) and give its image the same assertions and run.
#   hack/image.sh release [REF]      push to REF (default: a throwaway local `crane registry serve`), sign
#                                    with cosign, attach a syft SBOM as a signed attestation, verify both.
#
# OUT defaults to $DEDUP2D_CACHE/image/out. Everything expensive lives under $DEDUP2D_CACHE (the musl
# target dir, buildah storage, keys); the clone stays clean. Missing Debian packages, the rustup musl
# target and cargo-auditable are installed on first use.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
CACHE="$DEDUP2D_CACHE/image"
TARGET=x86_64-unknown-linux-musl
IMAGE_UID=65532
DEFAULT_OUT="$CACHE/out"

# on_exit CMD: run CMD when the script ends, however it ends (last registered runs first).
EXIT_CMDS=""
on_exit() { EXIT_CMDS="$1; $EXIT_CMDS"; trap "$EXIT_CMDS" EXIT; }

die() { echo "hack/image.sh: $*" >&2; exit 1; }
log() { echo "hack/image.sh: $*" >&2; }

crate_field() { sed -n "s/^$1 = \"\\(.*\\)\"$/\\1/p" "$ROOT/Cargo.toml" | head -1; }
VERSION="$(crate_field version)"
DESCRIPTION="$(crate_field description)"
LICENSE="$(crate_field license)"
SOURCE_URL="${DEDUP2D_IMAGE_SOURCE:-https://github.com/dedup2d/dedup2d}"

# The source identity: commit, its time (SOURCE_DATE_EPOCH) and a -dirty mark for uncommitted edits.
source_identity() {
  REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)" || die "not a git checkout: the image is labelled with the commit"
  git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REVISION="$REVISION-dirty"
  export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}"
  CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
}

# ensure_packages CMD:PACKAGE...: apt-get install the packages whose command is missing (once).
ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null 2>&1 \
      || missing+=("${pair#*:}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ "$(id -u)" = 0 ]] || die "missing Debian packages: ${missing[*]} (sudo apt-get install -y ${missing[*]})"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
export PATH="$PATH:/usr/sbin:/sbin"

ensure_musl_target() {
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >&2
}

# build_binary: the static release binary with its crate list embedded (`cargo auditable`).
# Its own target dir and no shared build dir: the release build is long and must not hold the
# shared build dir's lock.
build_binary() {
  ensure_packages musl-gcc:musl-tools
  ensure_musl_target
  local auditable
  auditable="$("$ROOT/hack/tools.sh" cargo-auditable)"
  (
    unset CARGO_BUILD_BUILD_DIR
    export CARGO_TARGET_DIR="$DEDUP2D_CACHE/target-musl"
    export PATH="$(dirname "$auditable"):$PATH"
    export CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_STRIP=symbols
    export DEDUP2D_GIT_REVISION="$REVISION"
    # Nothing in the binary holds a build time, and some build scripts (cc-rs, via psm) rerun
    # when SOURCE_DATE_EPOCH changes, which would rebuild half the tree on every commit.
    unset SOURCE_DATE_EPOCH
    cd "$ROOT"
    nice -n 10 cargo auditable build --release --target "$TARGET" --locked -j "${DEDUP2D_IMAGE_JOBS:-2}" >&2
  )
  BINARY="$DEDUP2D_CACHE/target-musl/$TARGET/release/dedup2d"
  file "$BINARY" 2>/dev/null | grep -q 'statically linked\|static-pie' \
    || ldd "$BINARY" 2>&1 | grep -q 'not a dynamic executable\|statically linked' \
    || die "$BINARY is not statically linked"
}

# mozilla_ca_bundle: Debian's Mozilla CA set as one PEM file, in name order, built from the package
# files rather than copied from /etc/ssl/certs, which also holds this machine's local CAs (a
# proxy's, here): those must not ship in the image. The Dockerfile runs the same command.
mozilla_ca_bundle() {
  find /usr/share/ca-certificates/mozilla -name '*.crt' | LC_ALL=C sort | xargs sed -s -e '$a\'
}

# write_rootfs DIR: the image's whole file system (the Dockerfile's /rootfs is the same list).
write_rootfs() {
  local dir="$1"
  rm -rf "$dir"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp"
  chmod 0755 "$dir" "$dir/etc" "$dir/etc/ssl" "$dir/etc/ssl/certs"
  chmod 1777 "$dir/tmp"
  install -m 0755 "$BINARY" "$dir/dedup2d"
  ensure_packages update-ca-certificates:ca-certificates
  mozilla_ca_bundle >"$dir/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$dir/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/tmp:/sbin/nologin\n' \
    "$IMAGE_UID" "$IMAGE_UID" >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$IMAGE_UID" >"$dir/etc/group"
  chmod 0644 "$dir/etc/passwd" "$dir/etc/group"
}

# pack_layout ROOTFS LAYOUT: one layer and a fixed config, every timestamp SOURCE_DATE_EPOCH.
pack_layout() {
  local rootfs="$1" layout="$2" layer
  layer="$(dirname "$layout")/layer.tar"
  rm -rf "$layout"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner --owner=0 --group=0 --format=gnu \
    -C "$rootfs" -cf "$layer" .
  umoci init --layout "$layout"
  umoci new --image "$layout:$VERSION"
  umoci raw add-layer --image "$layout:$VERSION" --history.created="$CREATED" \
    --history.created_by="hack/image.sh: /dedup2d (static, cargo auditable), CA bundle, passwd/group, /tmp" \
    "$layer"
  umoci config --image "$layout:$VERSION" --created="$CREATED" --no-history \
    --os linux --architecture amd64 \
    --config.user "$IMAGE_UID:$IMAGE_UID" --config.entrypoint /dedup2d --config.workingdir /tmp \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.label "org.opencontainers.image.title=dedup2d" \
    --config.label "org.opencontainers.image.description=$DESCRIPTION" \
    --config.label "org.opencontainers.image.source=$SOURCE_URL" \
    --config.label "org.opencontainers.image.licenses=$LICENSE" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.created=$CREATED"
  umoci gc --layout "$layout"
  rm -f "$layer"
}

# write_archive LAYOUT FILE: the OCI archive (a tar of the layout, what `skopeo copy ...
# oci-archive:` writes), made with tar because skopeo stamps its entries with the current time.
write_archive() {
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner --owner=0 --group=0 --format=gnu \
    --mode=u=rwX,go=rX -C "$1" -cf "$2.tmp" .
  mv "$2.tmp" "$2"
}

manifest_digest() { skopeo inspect --format '{{.Digest}}' "oci:$1:$VERSION"; }

cmd_build() {
  local out="${1:-$DEFAULT_OUT}"
  ensure_packages umoci:umoci skopeo:skopeo
  source_identity
  build_binary
  mkdir -p "$out"
  write_rootfs "$out/rootfs"
  pack_layout "$out/rootfs" "$out/layout"
  write_archive "$out/layout" "$out/dedup2d-oci.tar"
  manifest_digest "$out/layout" >"$out/digest"
  log "built oci:$out/layout:$VERSION and $out/dedup2d-oci.tar, $(cat "$out/digest") ($REVISION)"
}

# assert_config IMAGE: the config both builds must have (skopeo inspect --config).
assert_config() {
  local image="$1"
  skopeo inspect --config "$image" | EXPECT_USER="$IMAGE_UID:$IMAGE_UID" EXPECT_VERSION="$VERSION" \
    EXPECT_REVISION="$REVISION" EXPECT_LICENSE="$LICENSE" EXPECT_DESCRIPTION="$DESCRIPTION" \
    EXPECT_SOURCE="$SOURCE_URL" IMAGE="$image" python3 -c '
import json, os, sys
c = json.load(sys.stdin)
cfg = c.get("config", {})
labels = cfg.get("Labels") or {}
want = {
    "os": (c.get("os"), "linux"),
    "architecture": (c.get("architecture"), "amd64"),
    "user": (cfg.get("User"), os.environ["EXPECT_USER"]),
    "entrypoint": (cfg.get("Entrypoint"), ["/dedup2d"]),
    "label title": (labels.get("org.opencontainers.image.title"), "dedup2d"),
    "label version": (labels.get("org.opencontainers.image.version"), os.environ["EXPECT_VERSION"]),
    "label revision": (labels.get("org.opencontainers.image.revision"), os.environ["EXPECT_REVISION"]),
    "label licenses": (labels.get("org.opencontainers.image.licenses"), os.environ["EXPECT_LICENSE"]),
    "label description": (labels.get("org.opencontainers.image.description"), os.environ["EXPECT_DESCRIPTION"]),
    "label source": (labels.get("org.opencontainers.image.source"), os.environ["EXPECT_SOURCE"]),
}
bad = [f"{k}: {got!r}, want {exp!r}" for k, (got, exp) in want.items() if got != exp]
if bad:
    sys.exit(os.environ["IMAGE"] + " config is wrong: " + "; ".join(bad))
'
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bundle_config BUNDLE ARGS_JSON ENV_JSON: non-interactive, read-only root, host network (so the
# host reaches the health port and the container reaches the host's Redis), a tmpfs on /tmp as a
# Kubernetes emptyDir would give.
bundle_config() {
  ARGS="$2" ENVS="$3" python3 - "$1/config.json" <<'EOF'
import json, os, sys
path = sys.argv[1]
c = json.load(open(path))
p = c["process"]
p["terminal"] = False
p["args"] = json.loads(os.environ["ARGS"])
p["env"] = [e for e in p.get("env", []) if not e.startswith("HOSTNAME=")] + json.loads(os.environ["ENVS"])
c["root"]["readonly"] = True
ns = c["linux"]["namespaces"]
c["linux"]["namespaces"] = [n for n in ns if n["type"] != "network"]
c["mounts"] = [m for m in c["mounts"] if m["destination"] != "/tmp"] + [
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=64m"]}]
json.dump(c, open(path, "w"), indent=1)
EOF
}

# run_image LAYOUT TAG: unpack and run the image for real under runc.
run_image() {
  local layout="$1" tag="$2" work id state rport hport redis_pid status
  ensure_packages runc:runc umoci:umoci redis-server:redis-server curl:curl
  work="$(mktemp -d "$CACHE/run.XXXXXX")"
  state="$work/runc"
  id="dedup2d-image-check-$$"
  on_exit "runc --root '$state' delete -f '$id' >/dev/null 2>&1; rm -rf '$work'"
  umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null

  local mode
  mode="$(stat -c %a "$work/bundle/rootfs/tmp")"
  [[ "$mode" = 1777 ]] || die "/tmp in the image has mode $mode, want 1777"

  bundle_config "$work/bundle" '["/dedup2d", "--version"]' '[]'
  local version_out
  version_out="$(runc --root "$state" run -b "$work/bundle" "$id-v" </dev/null)" \
    || die "'dedup2d --version' failed under runc"
  [[ "$version_out" = "dedup2d $VERSION ($REVISION)" ]] \
    || die "'dedup2d --version' printed '$version_out', want 'dedup2d $VERSION ($REVISION)'"
  log "runc: $version_out"

  rport="$(free_port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  on_exit "kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null"
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$rport" ping >/dev/null || die "redis-server on port $rport did not start: $(cat "$work/redis.log")"

  hport="$(free_port)"
  bundle_config "$work/bundle" '["/dedup2d", "worker"]' "[
    \"DEDUP2D_REDIS_URL=redis://127.0.0.1:$rport/0\",
    \"DEDUP2D_WORKER_METRICS_ADDR=127.0.0.1:$hport\",
    \"HOSTNAME=image-check\"]"
  runc --root "$state" run -d -b "$work/bundle" "$id" </dev/null >"$work/worker.log" 2>&1 \
    || die "runc could not start the worker: $(cat "$work/worker.log")"
  status=000
  for _ in $(seq 100); do
    status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/healthz" || true)"
    [[ "$status" = 200 ]] && break
    sleep 0.2
  done
  [[ "$status" = 200 ]] || die "worker /healthz answered $status, want 200; worker log: $(cat "$work/worker.log")"

  local pid uid
  pid="$(runc --root "$state" state "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
  uid="$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")"
  [[ "$uid" = "$IMAGE_UID" ]] || die "the worker runs as uid $uid, want $IMAGE_UID"
  awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | grep -q '^ro' || die "the worker's root is not read-only"
  redis-cli -p "$rport" --scan --pattern '*worker:image-check*' | grep -q . \
    || die "the worker wrote no heartbeat key to Redis"
  log "runc: worker healthy (/healthz 200, uid $uid, read-only root, heartbeat in Redis)"
  runc --root "$state" kill "$id" TERM
  for _ in $(seq 50); do
    [[ "$(runc --root "$state" state "$id" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null)" = stopped ]] && break
    sleep 0.2
  done
}

cmd_check() {
  local out="${1:-$DEFAULT_OUT}" again
  cmd_build "$out"
  again="$out/again"
  mkdir -p "$again"
  write_rootfs "$again/rootfs"
  pack_layout "$again/rootfs" "$again/layout"
  write_archive "$again/layout" "$again/dedup2d-oci.tar"
  [[ "$(manifest_digest "$again/layout")" = "$(cat "$out/digest")" ]] \
    || die "not reproducible: a second packing gave $(manifest_digest "$again/layout"), first $(cat "$out/digest")"
  cmp -s "$again/dedup2d-oci.tar" "$out/dedup2d-oci.tar" \
    || die "not reproducible: a second packing gave a different $out/dedup2d-oci.tar"
  rm -rf "$again"
  log "reproducible: a second packing gave the same digest $(cat "$out/digest") and the same archive"
  assert_config "oci:$out/layout:$VERSION"
  assert_config "oci-archive:$out/dedup2d-oci.tar:$VERSION"
  run_image "$out/layout" "$VERSION"
  log "check passed: $(cat "$out/digest"), $(du -b "$out/dedup2d-oci.tar" | cut -f1) bytes archived"
}

# The builder base for dockerfile-check, made locally because no registry is reachable: Debian
# bookworm from the Debian mirror (mmdebstrap) with the build tools, plus this machine's pinned
# Rust toolchain (musl target included) and cargo-auditable, laid out like the official rust image
# (/usr/local/{rustup,cargo}). The build step fetches crates, so the base trusts what this machine
# trusts (its /etc/ssl/certs bundle, local CAs included); the final image does not inherit that
# (see mozilla_ca_bundle). Kept in buildah's storage, keyed by everything that goes into it.
BUILDER_PACKAGES="ca-certificates,gcc,libc6-dev,make,cmake,musl-tools"
buildah_() {
  buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run" --storage-driver vfs "$@"
}
builder_image() {
  local sysroot auditable key rootfs ctr mnt tc
  ensure_packages mmdebstrap:mmdebstrap buildah:buildah
  ensure_musl_target
  auditable="$("$ROOT/hack/tools.sh" cargo-auditable)"
  sysroot="$(rustc --print sysroot)"
  key="$(printf '%s\n' bookworm "$BUILDER_PACKAGES" "$(rustc -vV)" "$(cargo -V)" "$auditable" \
    "$(sha256sum /etc/ssl/certs/ca-certificates.crt)" \
    | sha256sum | cut -c1-12)"
  BUILDER_REF="localhost/dedup2d-builder:$key"
  buildah_ inspect --type image "$BUILDER_REF" >/dev/null 2>&1 && return 0
  log "making the builder base $BUILDER_REF (once per toolchain)"
  rootfs="$CACHE/builder-rootfs"
  rm -rf "$rootfs"
  mmdebstrap --quiet --variant=apt --include="$BUILDER_PACKAGES" --format=directory \
    bookworm "$rootfs" >&2
  tc="$rootfs/usr/local/rustup/toolchains/$(basename "$sysroot")"
  mkdir -p "$tc" "$rootfs/usr/local/cargo/bin"
  (cd "$sysroot" && tar --exclude=./share --exclude=./lib/rustlib/src -cf - .) | tar -C "$tc" -xf -
  for b in cargo rustc rustdoc; do
    ln -s "../../rustup/toolchains/$(basename "$sysroot")/bin/$b" "$rootfs/usr/local/cargo/bin/$b"
  done
  install -m 0755 "$auditable" "$rootfs/usr/local/cargo/bin/cargo-auditable"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  ctr="$(buildah_ from scratch)"
  mnt="$(buildah_ mount "$ctr")"
  cp -a "$rootfs/." "$mnt/"
  buildah_ umount "$ctr" >/dev/null
  buildah_ config --env CARGO_HOME=/usr/local/cargo --env RUSTUP_HOME=/usr/local/rustup \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --os linux --arch amd64 "$ctr"
  buildah_ commit -q "$ctr" "$BUILDER_REF" >/dev/null
  buildah_ rm "$ctr" >/dev/null
  rm -rf "$rootfs"
}

cmd_dockerfile_check() {
  local out="$CACHE/dockerfile-out" default_version
  ensure_packages buildah:buildah skopeo:skopeo runc:runc
  source_identity
  default_version="$(sed -n 's/^ARG VERSION=//p' "$ROOT/Dockerfile")"
  [[ "$default_version" = "$VERSION" ]] \
    || die "Dockerfile: ARG VERSION=$default_version, but Cargo.toml says $VERSION"
  builder_image
  mkdir -p "$CACHE/buildah/tmp" "$out"
  # TMPDIR: where buildah keeps RUN --mount=type=cache directories (the incremental musl target).
  TMPDIR="$CACHE/buildah/tmp" nice -n 10 buildah --root "$CACHE/buildah/root" \
    --runroot "$CACHE/buildah/run" --storage-driver vfs bud --isolation chroot --layers \
    --build-arg BUILDER_IMAGE="$BUILDER_REF" --build-arg CARGO_BUILD_JOBS="${DEDUP2D_IMAGE_JOBS:-2}" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED" \
    --build-arg SOURCE="$SOURCE_URL" \
    -t localhost/dedup2d:dockerfile-check -f "$ROOT/Dockerfile" "$ROOT" >&2
  rm -rf "$out/layout"
  buildah_ push -q localhost/dedup2d:dockerfile-check "oci:$out/layout:$VERSION" >&2
  # vfs keeps every layer as a full copy (the build stage's are 1.3 GB each): drop the untagged
  # intermediates so they do not pile up per revision. The incremental build lives in the cache
  # mounts, which stay.
  buildah_ rm --all >/dev/null
  buildah_ rmi --prune >/dev/null
  assert_config "oci:$out/layout:$VERSION"
  run_image "$out/layout" "$VERSION"
  log "dockerfile-check passed: $(manifest_digest "$out/layout")"
}

# release [REF]: push the reproducible image, sign it, attach its SBOM, verify both. Without REF a
# throwaway local registry (crane) and a throwaway key pair under the cache are used; for a real
# registry set DEDUP2D_COSIGN_KEY (and COSIGN_PASSWORD) to the project's key.
cmd_release() {
  local ref="${1:-}" out="$CACHE/release" crane cosign syft repo digest key pub
  local insecure=() tls=()
  ensure_packages skopeo:skopeo curl:curl
  crane="$("$ROOT/hack/tools.sh" crane)"
  cosign="$("$ROOT/hack/tools.sh" cosign)"
  syft="$("$ROOT/hack/tools.sh" syft)"
  cmd_build "$out/image"
  digest="$(cat "$out/image/digest")"
  if [[ -z "$ref" ]]; then
    local port pid
    port="$(free_port)"
    "$crane" registry serve --address "127.0.0.1:$port" >"$out/registry.log" 2>&1 &
    pid=$!
    on_exit "kill $pid 2>/dev/null"
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
    ref="127.0.0.1:$port/dedup2d:$VERSION"
    insecure=(--allow-insecure-registry)
    tls=(--dest-tls-verify=false)
  fi
  # REF without its tag (a registry port is not a tag: only a colon after the last slash is).
  repo="$ref"
  [[ "${ref##*/}" == *:* ]] && repo="${ref%:*}"
  skopeo copy -q "${tls[@]}" "oci:$out/image/layout:$VERSION" "docker://$ref"

  key="${DEDUP2D_COSIGN_KEY:-$out/cosign.key}"
  pub="${key%.key}.pub"
  if [[ ! -f "$key" ]]; then
    [[ -z "${DEDUP2D_COSIGN_KEY:-}" ]] || die "DEDUP2D_COSIGN_KEY=$key does not exist"
    (cd "$out" && COSIGN_PASSWORD="" "$cosign" generate-key-pair --output-key-prefix cosign >&2)
  fi
  export COSIGN_PASSWORD="${COSIGN_PASSWORD:-}"
  local sign=(--key "$key" --use-signing-config=false --tlog-upload=false "${insecure[@]}")
  local verify=(--key "$pub" --insecure-ignore-tlog "${insecure[@]}")
  "$cosign" sign --yes "${sign[@]}" "$repo@$digest" >&2
  "$syft" scan -q "oci-dir:$out/image/layout" -o "spdx-json=$out/sbom.spdx.json"
  python3 - "$out/sbom.spdx.json" <<'EOF'
import json, sys
names = {p.get("name") for p in json.load(open(sys.argv[1])).get("packages", [])}
missing = {"dedup2d", "tokio", "kube-client", "redis"} - names
if missing:
    sys.exit(f"the SBOM lacks {sorted(missing)}: is the binary built with cargo auditable?")
print(f"SBOM: {len(names)} packages", file=sys.stderr)
EOF
  "$cosign" attest --yes "${sign[@]}" --type spdxjson --predicate "$out/sbom.spdx.json" "$repo@$digest" >&2
  "$cosign" verify "${verify[@]}" "$repo@$digest" >/dev/null
  "$cosign" verify-attestation "${verify[@]}" --type spdxjson "$repo@$digest" >/dev/null
  log "released $repo@$digest: signed, SBOM attested ($out/sbom.spdx.json), both verified with $pub"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  check) shift; cmd_check "$@" ;;
  dockerfile-check) shift; cmd_dockerfile_check "$@" ;;
  release | --release) shift; cmd_release "$@" ;;
  *) die "usage: hack/image.sh build [OUT] | check [OUT] | dockerfile-check | release [REF]" ;;
esac

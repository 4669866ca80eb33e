#!/usr/bin/env bash
# hack/tools.sh TOOL — print the path of a pinned helper tool, building it first if needed.
#
# Tools are built from Go modules (or Rust crates) into $DEDUP2D_CACHE/tools/<tool>-<version>/,
# keyed by version, so a fresh clone reuses a machine's earlier build and the clone stays clean.
# Every pin lives here; scripts and tests call `hack/tools.sh NAME` instead of building tools
# themselves. Build output goes to stderr; stdout is only the binary's path.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"

die() { echo "hack/tools.sh: $*" >&2; exit 1; }

# go_install NAME VERSION PACKAGE@VERSION: `go install` into the versioned tool dir.
go_install() {
  local name="$1" version="$2" pkg="$3" dir="$CACHE/tools/$1-$2"
  if [[ ! -x "$dir/$name" ]]; then
    mkdir -p "$dir"
    echo "building $name $version (once per machine)" >&2
    GOBIN="$dir" go install -trimpath -ldflags "-s -w" "$pkg" >&2
  fi
  echo "$dir/$name"
}

# go_build_dir NAME DIR: build a Go module kept in this repository (its go.mod pins its deps).
# The key is a hash of the module's files, so an edit rebuilds it.
go_build_dir() {
  local name="$1" src="$ROOT/$2" key dir
  key="$(cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)"
  dir="$CACHE/tools/$name-$key"
  if [[ ! -x "$dir/$name" ]]; then
    mkdir -p "$dir"
    echo "building $name from $2 (once per change)" >&2
    (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$dir/$name" .) >&2
  fi
  echo "$dir/$name"
}

case "${1:-}" in
  # Add one line per tool: NAME) go_install NAME VERSION module/path/cmd@VERSION ;;
  crane) go_install crane v0.22.1 github.com/google/go-containerregistry/cmd/crane@v0.22.1 ;;
  cosign) go_install cosign v3.1.3 github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 ;;
  syft) go_install syft v1.57.1 github.com/anchore/syft/cmd/syft@v1.57.1 ;;
  # A Rust crate: `cargo install` into the versioned dir (its own temporary target dir).
  cargo-auditable) d="$CACHE/tools/cargo-auditable-0.7.7"; [[ -x "$d/bin/cargo-auditable" ]] || (unset CARGO_BUILD_BUILD_DIR CARGO_TARGET_DIR; cargo install --locked --quiet cargo-auditable --version 0.7.7 --root "$d" >&2); echo "$d/bin/cargo-auditable" ;;
  "") die "usage: hack/tools.sh TOOL" ;;
  *) die "unknown tool '$1'" ;;
esac

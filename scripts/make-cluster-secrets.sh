#!/usr/bin/env bash
# Makes a kvfabric cluster's credentials (docs/security.md) in a directory:
#   token        the cluster token: every process proves it on every gRPC call   (KVF_CLUSTER_TOKEN)
#   handle-key   signs KV handles; workers only, never the frontend              (KVF_HANDLE_KEY)
#   ca.crt/key   a CA for the control plane's TLS
#   tls.crt/key  one certificate for the control plane (server and client, SAN "kvfabric", localhost)
# With --apply, creates the Kubernetes Secrets the manifests mount: kvfabric-cluster (token, handle-key) and
# kvfabric-tls (tls.crt, tls.key, ca.crt). Refuses to overwrite an existing directory's secrets.
#
#   scripts/make-cluster-secrets.sh ./secrets [--apply] [--namespace NS]
set -euo pipefail
dir=${1:?usage: make-cluster-secrets.sh DIR [--apply] [--namespace NS]}
shift
apply=0
ns=()
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) apply=1 ;;
    --namespace) ns=(--namespace "$2"); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -e "$dir/token" ]; then
  echo "$dir already holds credentials; remove it first" >&2
  exit 1
fi
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
openssl rand -hex 32 > "$dir/token"
openssl rand -hex 32 > "$dir/handle-key"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 825 -subj "/CN=kvfabric-ca" 2>/dev/null
openssl req "${ec[@]}" -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=kvfabric" 2>/dev/null
printf 'subjectAltName=DNS:kvfabric,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' > "$dir/tls.ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -out "$dir/tls.crt" -days 825 -extfile "$dir/tls.ext" 2>/dev/null
rm -f "$dir/tls.csr" "$dir/tls.ext" "$dir/ca.srl"
echo "credentials in $dir (keep ca.key offline; the Secrets do not need it)"
if [ "$apply" -eq 1 ]; then
  kubectl "${ns[@]}" create secret generic kvfabric-cluster --from-file=token="$dir/token" --from-file=handle-key="$dir/handle-key"
  kubectl "${ns[@]}" create secret generic kvfabric-tls --from-file=tls.crt="$dir/tls.crt" --from-file=tls.key="$dir/tls.key" --from-file=ca.crt="$dir/ca.crt"
fi

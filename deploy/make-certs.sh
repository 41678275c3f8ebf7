#!/usr/bin/env bash
# Certificates for a kvraft cluster, with openssl: a cluster CA, one certificate per node
# (for its port and its peer connections), and a client CA with one client certificate.
#
#   deploy/make-certs.sh DIR NODES [HOST ...]
#
# DIR gets ca.pem (give it to clients as --cacert and to nodes as --peer-trusted-ca-file),
# node-I.pem/node-I-key.pem for I in 0..NODES-1 (--cert-file/--key-file and
# --peer-cert-file/--peer-key-file), client-ca.pem (--trusted-ca-file, for
# --client-cert-auth) and client.pem/client-key.pem (a client's --cert/--key).
# Every node certificate names every HOST (default 127.0.0.1 and localhost) as a subject
# alternative name. Keys are EC P-256, mode 0600; certificates last 365 days.
# The CA keys (ca-key.pem, client-ca-key.pem) sign nothing else: keep them offline.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR NODES [HOST ...]}
nodes=${2:?usage: make-certs.sh DIR NODES [HOST ...]}
shift 2
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(127.0.0.1 localhost)
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
umask 077
san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}

new_ca() { # NAME SUBJECT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -keyout "$1-key.pem" -out "$1.pem" -subj "$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}
new_cert() { # NAME CA SUBJECT EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1-key.pem" -out "$1.csr" -subj "$3" 2>/dev/null
  printf '%b' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2-key.pem" -CAcreateserial \
    -days 365 -out "$1.pem" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

new_ca ca "/CN=kvraft cluster CA"
new_ca client-ca "/CN=kvraft client CA"
for i in $(seq 0 $((nodes - 1))); do
  new_cert "node-$i" ca "/CN=kvraft node $i" \
    "subjectAltName=$san\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n"
done
new_cert client client-ca "/CN=kvraft client" \
  "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
rm -f ./*.srl
chmod 644 ./*.pem
chmod 600 ./*-key.pem
echo "certificates for $nodes nodes in $dir (hosts: ${hosts[*]})"

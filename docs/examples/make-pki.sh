#!/bin/sh
# A private CA and a certificate for one harpd host, with openssl.
# Run: sh make-pki.sh HOSTNAME   (writes into the current directory)
set -eu
host="${1:-web01.example.net}"

# 1. The CA: a key and a self-signed certificate, valid ten years.
openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days 3650 \
    -subj "/CN=harp CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"

# 2. The daemon's key and a certificate request naming the host.
openssl req -new -newkey rsa:3072 -nodes -sha256 \
    -subj "/CN=$host" -keyout "$host.key" -out "$host.csr"

# 3. The CA signs it, for two years.  The name clients dial must be in
#    subjectAltName: that, not the CN, is what they check.
cat > "$host.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$host
EXT
openssl x509 -req -in "$host.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 730 -sha256 -extfile "$host.ext" -out "$host.pem"

# 4. The SHA-256 fingerprint, for pinning instead of (or besides) the CA.
openssl x509 -in "$host.pem" -noout -fingerprint -sha256

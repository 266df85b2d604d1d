#!/bin/sh
# A self-signed certificate for the lab's nginx (compose/nginx/tls/tls.crt + tls.key).
# Production: put your CA-issued pair in a directory and set PHOENIX_TLS_DIR to it.
# Usage: sh compose/nginx/make-selfsigned-cert.sh [host name] [output dir]
set -eu
HOST="${1:-localhost}"
OUT="${2:-$(dirname "$0")/tls}"
mkdir -p "$OUT"
umask 077
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 365 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST,IP:127.0.0.1" \
    -keyout "$OUT/tls.key" -out "$OUT/tls.crt" 2>/dev/null
chmod 644 "$OUT/tls.crt"
echo "wrote $OUT/tls.crt and $OUT/tls.key for $HOST (self-signed, 365 days)"

#!/bin/sh
# Makes a throwaway CA and a Postgres server certificate for docker-compose.yml, so the server
# connects with sslmode=verify-full exactly as in production. Runs once in the `certs` service.
set -eu
cd /certs
[ -f server.crt ] && exit 0
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=pexper compose CA" \
    -keyout ca.key -out ca.crt
openssl req -newkey rsa:2048 -nodes -subj "/CN=postgres" -keyout server.key -out server.csr
printf 'subjectAltName=DNS:postgres\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile san.ext -out server.crt
rm -f ca.key server.csr san.ext ca.srl
# The postgres image runs as uid 999 and refuses a key others can read.
chown 999:999 server.key server.crt && chmod 600 server.key && chmod 644 ca.crt server.crt

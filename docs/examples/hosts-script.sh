#!/bin/sh
# A --hosts-script: print the hosts registry as JSON lines on stdout.
# This one turns an inventory of "name address" lines into entries that all
# use the same harpd account, whose password it takes from the environment.
set -eu
inventory="${INVENTORY:-/etc/harp-proxy/inventory.txt}"
while read -r name address; do
    case "$name" in ''|'#'*) continue ;; esac
    printf '{"hostname": "%s", "address": "%s", "port": 4306, "credentials": {"user": "harp", "password": "%s"}}\n' \
        "$name" "$address" "$HARPD_PASSWORD"
done < "$inventory"

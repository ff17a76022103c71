#!/bin/sh
# Fetch the relay's PowerMTA domain lists into /etc/pmta/relay and reload PowerMTA when they changed.
# Usage: RELAY_URL=http://127.0.0.1:8025 RELAY_ADMIN_API_KEY=... fetch-domain-lists.sh
# A failed fetch leaves the current files in place (curl --fail, then an atomic rename).
set -eu

: "${RELAY_URL:?set RELAY_URL, e.g. http://127.0.0.1:8025}"
: "${RELAY_ADMIN_API_KEY:?set RELAY_ADMIN_API_KEY}"
DIR="${PMTA_DIR:-/etc/pmta/relay}"
PMTA="${PMTA:-pmta}"
changed=0

fetch() {  # fetch <format> <file>
    new="$DIR/.$2.new"
    curl --silent --show-error --fail --max-time 30 \
        -H "Authorization: Bearer $RELAY_ADMIN_API_KEY" \
        -H "Content-Type: application/json" \
        -d "{\"DomainsResponseFormat\": \"$1\"}" \
        -o "$new" "$RELAY_URL/api/v1/sender.domains"
    # The first line is a comment with a timestamp: compare what follows it.
    if [ -f "$DIR/$2" ] && [ "$(tail -n +2 "$new")" = "$(tail -n +2 "$DIR/$2")" ]; then
        rm -f "$new"
    else
        mv "$new" "$DIR/$2"
        changed=1
    fi
}

fetch powermta-relay-domains relay-domains.conf
fetch powermta-bounce-domains relay-bounce-domains.conf

if [ "$changed" -eq 1 ]; then
    "$PMTA" reload
fi

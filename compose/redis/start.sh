#!/bin/sh
# Redis for Phoenix 95 (compose only): one ACL user per process, from users.acl.in
# (generated from scripts/grants.py) with the passwords from the environment
# (python -m scripts.identities env prints them). The default user is the operator's,
# with its own password: nothing connects without one.
set -eu

: "${PHOENIX95_REDIS_ADMIN_PASSWORD:?set PHOENIX95_REDIS_ADMIN_PASSWORD (python -m scripts.identities env)}"
acl=/tmp/phoenix95-users.acl
umask 077
rules=$(grep -v '^#' /phoenix95/users.acl.in)
printf 'user default on >%s ~* &* +@all\n' "$PHOENIX95_REDIS_ADMIN_PASSWORD" > "$acl"
while read -r kind user grants; do
    [ -n "$kind" ] || continue
    var="PHOENIX95_REDIS_PASSWORD_$(echo "$kind" | tr '[:lower:]' '[:upper:]')"
    eval "password=\${$var:-}"
    if [ -z "$password" ]; then
        echo "phoenix95: $var is not set (python -m scripts.identities env)" >&2
        exit 1
    fi
    printf 'user %s on >%s %s\n' "$user" "$password" "$grants" >> "$acl"
done <<RULES
$rules
RULES
chown redis:redis "$acl" 2>/dev/null || true
exec docker-entrypoint.sh redis-server "$@" --aclfile "$acl"

#!/usr/bin/env bash
# `.ci/postgres.sh COMMAND...`: runs COMMAND with a throwaway PostgreSQL server on
# 127.0.0.1 (a free port, trust auth, data in a temporary directory) and
# KEYGATE_TEST_POSTGRES=postgres://keygate@127.0.0.1:PORT naming it; the server and its
# data are gone when COMMAND ends. Fails loudly when PostgreSQL is not installed.
# KEYGATE_TEST_POSTGRES_CTL names a script that stops (`stop`) and starts (`start`) the
# server again, for the fault tests.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "postgres.sh: no PostgreSQL server found under /usr/lib/postgresql (make setup installs it)" >&2
    exit 1
fi

dir=$(mktemp -d /tmp/keygate-pg.XXXXXX)
# initdb refuses to run as root: run the server as the postgres user then.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir"

stop() {
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_owner "$bindir/initdb" -D "$dir/data" -U keygate --auth=trust --locale=C --encoding=UTF8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
# fsync off: the data is thrown away, and tests should not wait on the disk.
options="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off -c max_connections=400"
as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$options" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
owner=""
[ "$(id -u)" = 0 ] && owner="runuser -u postgres --"
cat >"$dir/ctl.sh" <<CTL
#!/usr/bin/env bash
# stop: the server goes away at once, as in a crash; start: it comes back on the same port.
case "\$1" in
    stop) exec $owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop ;;
    start) exec $owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$options" start ;;
    *) echo "usage: \$0 stop|start" >&2; exit 2 ;;
esac
CTL
chmod +x "$dir/ctl.sh"
echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2

KEYGATE_TEST_POSTGRES="postgres://keygate@127.0.0.1:$port" KEYGATE_TEST_POSTGRES_CTL="$dir/ctl.sh" "$@"

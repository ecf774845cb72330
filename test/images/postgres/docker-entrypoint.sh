#!/usr/bin/env bash
# Entrypoint for hafe's PostgreSQL test image. It behaves like the official
# postgres image's entrypoint as far as testcontainers-go's postgres module and
# ordinary users rely on it:
#   - POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#     POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default: the user),
#     POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   - a command starting with `postgres` or with an option (`-c ...`) runs the
#     server; anything else is executed as is;
#   - on an empty data directory: initdb (local trust, host scram-sha-256), a
#     temporary server on the unix socket only, whose log goes to stdout (so
#     "database system is ready to accept connections" appears twice in all),
#     the database, /docker-entrypoint-initdb.d/*.{sh,sql,sql.gz}, stop;
#   - the server runs as the postgres user, listening on *.
set -Eeo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*"; }

if [[ "${1:-}" == -* ]]; then
	set -- postgres "$@"
fi

if [[ "${1:-}" != postgres ]]; then
	exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# As root: prepare the directories, then run this script again as postgres.
if [[ "$(id -u)" == 0 ]]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
		chown -R postgres:postgres "$PGDATA"
	fi
	chmod 0700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

run_psql() {
	psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER" "$@"
}

init_cluster() {
	local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [[ -z "${POSTGRES_PASSWORD:-}" && "$auth" != trust ]]; then
		cat >&2 <<-'EOM'
			Error: Database is uninitialized and superuser password is not specified.
			       Set POSTGRES_PASSWORD to a non-empty value for the superuser, or
			       POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a
			       password (never do that outside a test).
		EOM
		exit 1
	fi

	log "initdb $PGDATA (user $POSTGRES_USER, host auth $auth)"
	local pwfile
	pwfile="$(mktemp)"
	printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
	# shellcheck disable=SC2086
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
		--auth-local=trust --auth-host="$auth" \
		--encoding=UTF8 --locale=C.UTF-8 \
		${POSTGRES_INITDB_ARGS:-} >/dev/null
	rm -f "$pwfile"

	{
		echo
		echo "# hafe test image: any host, password checked"
		echo "host all all all $auth"
	} >>"$PGDATA/pg_hba.conf"
	{
		echo
		echo "# hafe test image"
		echo "listen_addresses = '*'"
	} >>"$PGDATA/postgresql.conf"

	# Temporary server: unix socket only, log to stdout.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 60 start

	if [[ "$POSTGRES_DB" != postgres ]]; then
		log "create database $POSTGRES_DB"
		run_psql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db";
		EOSQL
	fi

	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[[ -e "$f" ]] || continue
		case "$f" in
		*.sh)
			if [[ -x "$f" ]]; then
				log "running $f"
				"$f"
			else
				log "sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql)
			log "running $f"
			run_psql --dbname "$POSTGRES_DB" -f "$f"
			;;
		*.sql.gz)
			log "running $f"
			gunzip -c "$f" | run_psql --dbname "$POSTGRES_DB"
			;;
		*) log "ignoring $f" ;;
		esac
	done

	pg_ctl -D "$PGDATA" -m fast -w -t 60 stop
	log "PostgreSQL init process complete; ready for start up."
}

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export POSTGRES_USER POSTGRES_DB PGUSER="$POSTGRES_USER" PGPORT=5432

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
	init_cluster
else
	log "data directory $PGDATA already initialised: skipping init"
fi

shift
exec postgres "$@"

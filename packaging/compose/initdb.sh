#!/usr/bin/env bash
# Runs once, when the compose file's PostgreSQL starts on an empty volume
# (/docker-entrypoint-initdb.d). hafe serve refuses a superuser, so the
# front-ends get a role of their own: it owns database "app" (CREATE
# EXTENSION hafe needs CREATE there) and may create roles (hafe db install
# creates the NOLOGIN client role raw SQL runs as). The demo bank's tables,
# which the built-in templates use, are created as that role.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
	--set pw="$HAFE_DB_PASSWORD" <<'EOSQL'
CREATE ROLE hafe LOGIN CREATEROLE PASSWORD :'pw';
ALTER DATABASE app OWNER TO hafe;
EOSQL
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname app \
	-c 'GRANT ALL ON SCHEMA public TO hafe'
psql -v ON_ERROR_STOP=1 --no-psqlrc --username hafe --dbname app -f /hafe-demo/schema.sql

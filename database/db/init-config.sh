#!/bin/sh
# Run once, when the database is created (by ./dev, or by Docker's postgres image, which runs
# the files of /docker-entrypoint-initdb.d in name order): two-phase commit needs prepared
# transactions, which PostgreSQL disables by default. Takes effect at the next server start.
set -e
echo "max_prepared_transactions = 100" >> "$PGDATA/postgresql.conf"

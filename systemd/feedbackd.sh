#!/bin/sh
# `feedbackd` for people at the shell, installed by `make install`. It runs as the service user
# so that files it creates (the feedback log's WAL) stay the service's; root drops to it.
export FEEDBACKD_HOME=@PREFIX@
if [ "$(id -u)" = 0 ]; then
    exec runuser -u @USER@ -- env FEEDBACKD_HOME=@PREFIX@ @PREFIX@/venv/bin/feedbackd "$@"
fi
exec @PREFIX@/venv/bin/feedbackd "$@"

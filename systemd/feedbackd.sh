#!/bin/sh
# `feedbackd` for people at the shell, installed by `make install`. It runs as the service user
# so that files it creates (the feedback log's WAL) stay the service's; root drops to it.
# lgpio writes notification files into LG_WD (else the current folder, maybe not writable).
export FEEDBACKD_HOME=@PREFIX@ LG_WD="${LG_WD:-/tmp}"
if [ "$(id -u)" = 0 ]; then
    exec runuser -u @USER@ -- env FEEDBACKD_HOME=@PREFIX@ LG_WD="$LG_WD" @PREFIX@/venv/bin/feedbackd "$@"
fi
exec @PREFIX@/venv/bin/feedbackd "$@"

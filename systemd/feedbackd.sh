#!/bin/sh
# `feedbackd` for people at the shell, installed by `make install`. It runs as the service user
# so that files it creates (the feedback log's WAL) stay the service's; root drops to it.
# lgpio makes its notification FIFO (.lgd-nfy0, one name for every process, never removed) in LG_WD
# and moves there (else the current folder, maybe not writable). Each user needs a folder of its
# own: in a shared /tmp the FIFO another user left cannot be opened, and the button fails.
export FEEDBACKD_HOME=@PREFIX@
if [ "$(id -u)" = 0 ]; then
    # The service's own folder (its WorkingDirectory, where lgpio puts the service's FIFO): the same user's.
    # FEEDBACKD_DROPPED_ROOT: a log out of its reach is then not answered with "run it as root".
    # FEEDBACKD_STATE: check also reads the config as the unit would, in that folder and its sandbox.
    # check reads a camera frame: as the service (LimitMEMLOCK=infinity) it locks its memory off the swap
    ulimit -l unlimited 2>/dev/null || true
    exec runuser -u @USER@ -- env FEEDBACKD_HOME=@PREFIX@ FEEDBACKD_DROPPED_ROOT=1 LG_WD=@STATE@ FEEDBACKD_STATE=@STATE@ \
        @PREFIX@/venv/bin/feedbackd "$@"
fi
export LG_WD="${LG_WD:-${XDG_RUNTIME_DIR:-/tmp}}"
exec @PREFIX@/venv/bin/feedbackd "$@"

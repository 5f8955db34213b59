#!/usr/bin/env bash
# `sudo make uninstall`: stop and remove the service, the venv and the models. The logged
# feedback (/var/lib/feedbackd) and the config (/etc/feedbackd) stay unless PURGE=1.
set -euo pipefail

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/feedbackd}
PURGE=${PURGE:-0}
SERVICE_USER=feedbackd

say() { printf 'uninstall: %s\n' "$*"; }

if [ -z "$DESTDIR" ]; then
    [ "$(id -u)" = 0 ] || { echo "uninstall: error: run as root: sudo make uninstall" >&2; exit 1; }
    if [ -d /run/systemd/system ]; then
        systemctl disable --now feedbackd.service 2>/dev/null || true
    fi
fi
case "$PREFIX" in /?*) ;; *) echo "uninstall: error: PREFIX '$PREFIX' must be an absolute folder" >&2; exit 1 ;; esac
rm -f "$DESTDIR/etc/systemd/system/feedbackd.service" "$DESTDIR/usr/local/bin/feedbackd"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
# Only what the install put there, so a wrong PREFIX cannot take a system folder with it.
rm -rf "$DESTDIR$PREFIX/venv" "$DESTDIR$PREFIX/models" "$DESTDIR$PREFIX/README.md"
rmdir "$DESTDIR$PREFIX" 2>/dev/null || true
say "removed the service, $PREFIX and the feedbackd command"
if [ "$PURGE" = 1 ]; then
    rm -rf "$DESTDIR/var/lib/feedbackd" "$DESTDIR/etc/feedbackd"
    if [ -z "$DESTDIR" ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" || true
    fi
    say "PURGE=1: removed the feedback log (/var/lib/feedbackd), the config and the $SERVICE_USER user"
else
    say "kept the feedback log in /var/lib/feedbackd and the config in /etc/feedbackd (PURGE=1 removes them)"
fi

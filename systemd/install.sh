#!/bin/sh
# Install digit-inbox as a systemd service, or upgrade it; safe to run again at any time.
#
#   sudo systemd/install.sh                   program, user, folders, config, unit
#   sudo systemd/install.sh --instance lab    one more inbox: digit-inbox@lab (see docs/service.md)
#   sudo systemd/install.sh --uninstall       remove the program and the units; data, config,
#                                             state and the user stay (they own your files)
#
# Environment (for packaging and tests):
#   DESTDIR=/tmp/root          install under this root; no systemctl calls
#   DIGIT_INBOX_SKIP_USER=1    do not create the user or change owners (files stay the caller's)
#   DIGIT_INBOX_SKIP_VENV=1    do not create /opt/digit-inbox or pip install
#   PYTHON=python3.11          the interpreter for the virtual environment (default python3)
set -eu

NAME=digit-inbox
REPO=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
SKIP_USER=${DIGIT_INBOX_SKIP_USER:-}
SKIP_VENV=${DIGIT_INBOX_SKIP_VENV:-}
PYTHON=${PYTHON:-python3}
PREFIX=/opt/$NAME
UNITS=/etc/systemd/system
DATA=/srv/$NAME
STATE=/var/lib/$NAME
ETC=/etc/$NAME
DOC=$PREFIX/share/doc/$NAME

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# The comment block at the top of this file.
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit "$1"
}

need_root() {
    [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run me as root (sudo)"
}

# systemctl only on a live system booted with systemd, never into a DESTDIR.
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# new_folder MODE OWNER DIR: create DIR unless it exists; an existing folder keeps the owner
# and mode an administrator may have given it.
new_folder() {
    [ -d "$DESTDIR$3" ] && return 0
    mkdir -p "$DESTDIR$3"
    [ -n "$SKIP_USER" ] || chown "$2" "$DESTDIR$3"
    chmod "$1" "$DESTDIR$3"
    say "created $3 (mode $1)"
}

create_user() {
    if [ -n "$SKIP_USER" ]; then
        return 0
    fi
    [ -z "$DESTDIR" ] || die "with DESTDIR set DIGIT_INBOX_SKIP_USER=1 and create the user on the target"
    getent group "$NAME" >/dev/null || groupadd --system "$NAME"
    if ! getent passwd "$NAME" >/dev/null; then
        useradd --system --gid "$NAME" --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "digit-inbox daemon" "$NAME"
        say "created user and group $NAME; add producers with: usermod -aG $NAME <user>"
    fi
}

# Data folders: group digit-inbox may drop and collect files (2770); setgid keeps every file
# dropped or filed there in the group, whoever wrote it. Others see nothing (0750 above them).
create_folders() {
    new_folder 0750 "root:$NAME" "$1"
    for folder in inbox outbox failed review reports; do
        new_folder 2770 "$NAME:$NAME" "$1/$folder"
    done
}

# write_config FILE DATA STATE: the repository's documented config with production paths.
# An existing FILE is never touched: it holds the administrator's settings.
write_config() {
    file=$1 data=$2 state=$3
    mkdir -p "$DESTDIR$ETC"
    if [ -e "$DESTDIR$file" ]; then
        say "kept $file (yours); compare with $REPO/config.yaml after an upgrade"
        return 0
    fi
    tmp="$DESTDIR$file.tmp"
    "$PYTHON" "$REPO/systemd/set_config.py" "$REPO/config.yaml" \
        "paths.inbox=$data/inbox" "paths.outbox=$data/outbox" "paths.failed=$data/failed" \
        "paths.review=$data/review" "paths.reports=$data/reports" "paths.state=$state" \
        "metrics.textfile=$state/$NAME.prom" >"$tmp"
    [ -n "$SKIP_USER" ] || chown "root:$NAME" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$DESTDIR$file"
    say "wrote $file"
}

install_program() {
    if [ -n "$SKIP_VENV" ]; then
        return 0
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$PYTHON is older than 3.10; set PYTHON to a newer interpreter"
    [ -x "$DESTDIR$PREFIX/bin/python" ] || "$PYTHON" -m venv "$DESTDIR$PREFIX"
    # Not editable; the format extras (PDF, HEIC) but not [train]: the service never needs torch.
    "$DESTDIR$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade "$REPO[pdf,heif]"
    # On PATH for `digit-inbox status`; the service itself calls the full path.
    mkdir -p "$DESTDIR/usr/local/bin"
    ln -sfn "$PREFIX/bin/$NAME" "$DESTDIR/usr/local/bin/$NAME"
    say "installed $("$DESTDIR$PREFIX/bin/digit-inbox" --version) into $PREFIX"
}

install_units() {
    mkdir -p "$DESTDIR$UNITS" "$DESTDIR$DOC"
    for unit in "$NAME.service" "$NAME@.service" "$NAME-review.service"; do
        install -m 0644 "$REPO/systemd/$unit" "$DESTDIR$UNITS/$unit"
    done
    install -m 0644 "$REPO/docs/service.md" "$DESTDIR$DOC/service.md"
    if systemd_running; then
        systemctl daemon-reload
        # An upgrade must not leave the old code running.
        systemctl try-restart "$NAME.service" "$NAME@*.service"
    fi
}

install_all() {
    instance=$1
    need_root
    create_user
    install_program
    install_units
    if [ -z "$instance" ]; then
        create_folders "$DATA"
        write_config "$ETC/config.yaml" "$DATA" "$STATE"
        unit=$NAME
    else
        create_folders "$DATA/$instance"
        write_config "$ETC/$instance.yaml" "$DATA/$instance" "$STATE/$instance"
        unit="$NAME@$instance"
    fi
    say "done. Start it with: systemctl enable --now $unit"
}

uninstall_all() {
    need_root
    if systemd_running; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
        systemctl stop "$NAME@*.service" || true
    fi
    rm -f "$DESTDIR$UNITS/$NAME.service" "$DESTDIR$UNITS/$NAME@.service" \
        "$DESTDIR$UNITS/$NAME-review.service" "$DESTDIR$UNITS"/*.wants/"$NAME"-review.service \
        "$DESTDIR$UNITS"/*.wants/"$NAME".service "$DESTDIR$UNITS"/*.wants/"$NAME"@*.service
    rm -rf "$DESTDIR$PREFIX"
    if [ "$(readlink "$DESTDIR/usr/local/bin/$NAME" 2>/dev/null)" = "$PREFIX/bin/$NAME" ]; then
        rm -f "$DESTDIR/usr/local/bin/$NAME"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed the units and $PREFIX."
    say "kept your data ($DATA), config ($ETC), state ($STATE) and the $NAME user and group,"
    say "which own the data; remove them by hand once you no longer need the files."
}

instance="" uninstall=""
while [ $# -gt 0 ]; do
    case $1 in
    --instance)
        [ $# -ge 2 ] && [ -n "$2" ] || usage 2
        instance=$2
        shift 2
        ;;
    --uninstall) uninstall=1 && shift ;;
    -h | --help) usage 0 ;;
    *) usage 2 ;;
    esac
done
case $instance in
*[!A-Za-z0-9_]*) die "instance names are letters, digits and _ only: $instance" ;;
esac

if [ -n "$uninstall" ]; then
    uninstall_all
else
    install_all "$instance"
fi

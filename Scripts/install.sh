#!/usr/bin/env bash
# Install a Gatehouse build on a Debian host (or into a staging tree with --destdir).
#
#   sudo Scripts/install.sh                       # build if needed, install to /usr/local
#   Scripts/install.sh --destdir /tmp/stage       # staging tree, e.g. for packaging
#
# Installs:
#   $DESTDIR$PREFIX/bin/gatehouse                 binary, mode 0755
#   $DESTDIR/etc/systemd/system/gatehouse.service ExecStart rewritten to $PREFIX/bin/gatehouse
#   $DESTDIR/etc/systemd/system/gatehouse.socket  optional socket activation
#   $DESTDIR/etc/gatehouse/gatehouse.yaml         only if absent, mode 0644
#   $DESTDIR/etc/gatehouse/htpasswd               only if absent (empty, one comment line)
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: Scripts/install.sh [options]

  --prefix DIR     installation prefix; the binary goes to $DESTDIR$PREFIX/bin/gatehouse
                   (default: /usr/local)
  --binary PATH    Gatehouse binary to install (default: .build/release/gatehouse; built
                   with `swift build -c release --product gatehouse` if missing)
  --destdir DIR    stage everything under DIR (also read from the DESTDIR environment
                   variable); no user is created and systemd is not touched
  --no-user        do not create the `gatehouse` system user
  -h, --help       show this help
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local
binary=""
destdir=${DESTDIR:-}
create_user=1

while [ $# -gt 0 ]; do
    case $1 in
        --prefix)     [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*)   prefix=${1#*=}; shift ;;
        --binary)     [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
        --binary=*)   binary=${1#*=}; shift ;;
        --destdir)    [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift 2 ;;
        --destdir=*)  destdir=${1#*=}; shift ;;
        --no-user)    create_user=0; shift ;;
        -h|--help)    usage; exit 0 ;;
        *)            usage >&2; die "unknown option: $1" ;;
    esac
done

case $prefix in
    /*) ;;
    *) die "--prefix must be an absolute path: $prefix" ;;
esac
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/
destdir=${destdir%/}

# --- The binary ---------------------------------------------------------------------------
if [ -z "$binary" ]; then
    binary=$repo_root/.build/release/gatehouse
    if [ ! -x "$binary" ]; then
        if command -v swift >/dev/null 2>&1; then
            echo "==> $binary not found; building it (swift build -c release --product gatehouse)"
            (cd "$repo_root" && swift build -c release --product gatehouse)
        else
            die "$binary not found and swift is not on PATH; build it first or pass --binary"
        fi
    fi
fi
[ -f "$binary" ] || die "binary not found: $binary"

for f in gatehouse.service gatehouse.socket gatehouse.yaml; do
    [ -f "$repo_root/Config/$f" ] || die "missing $repo_root/Config/$f"
done

bindir=$destdir$prefix/bin
[ "$prefix" = / ] && bindir=$destdir/bin
unitdir=$destdir/etc/systemd/system
confdir=$destdir/etc/gatehouse
installed=()

install -d -m 0755 "$bindir" "$unitdir" "$confdir"

install -m 0755 "$binary" "$bindir/gatehouse"
installed+=("$bindir/gatehouse")

# --- systemd units --------------------------------------------------------------------------
# The unit files name /usr/local/bin/gatehouse; point ExecStart at the chosen prefix.
exec_path=${bindir#"$destdir"}/gatehouse
sed "s#^ExecStart=/usr/local/bin/gatehouse#ExecStart=$exec_path#" \
    "$repo_root/Config/gatehouse.service" > "$unitdir/gatehouse.service.tmp"
chmod 0644 "$unitdir/gatehouse.service.tmp"
mv -f "$unitdir/gatehouse.service.tmp" "$unitdir/gatehouse.service"
installed+=("$unitdir/gatehouse.service")
install -m 0644 "$repo_root/Config/gatehouse.socket" "$unitdir/gatehouse.socket"
installed+=("$unitdir/gatehouse.socket")

# --- System user ----------------------------------------------------------------------------
# The unit uses DynamicUser=yes, which takes the unit's name as the user name. If a static
# user called `gatehouse` exists, systemd runs the service as that user instead of a fresh
# UID, so the credentials can be group-readable only (root:gatehouse 0640). Without it, each
# start gets an unpredictable UID, and the htpasswd file must be world-readable (0644):
# it holds password hashes, not passwords, and /etc/gatehouse is read-only for the service.
am_root=0
[ "$(id -u)" -eq 0 ] && am_root=1
if [ -z "$destdir" ] && [ "$create_user" -eq 1 ] && [ "$am_root" -eq 1 ] \
        && ! getent passwd gatehouse >/dev/null; then
    useradd --system --no-create-home --shell /usr/sbin/nologin gatehouse
    echo "==> created system user gatehouse"
fi
static_user=0
if [ -z "$destdir" ] && [ "$am_root" -eq 1 ] && getent group gatehouse >/dev/null \
        && getent passwd gatehouse >/dev/null; then
    static_user=1
fi

# --- Configuration --------------------------------------------------------------------------
if [ -e "$confdir/gatehouse.yaml" ]; then
    echo "==> kept existing $confdir/gatehouse.yaml (example: $repo_root/Config/gatehouse.yaml)"
else
    install -m 0644 "$repo_root/Config/gatehouse.yaml" "$confdir/gatehouse.yaml"
    installed+=("$confdir/gatehouse.yaml")
fi

if [ -e "$confdir/htpasswd" ]; then
    echo "==> kept existing $confdir/htpasswd"
else
    (
        umask 077
        cat > "$confdir/htpasswd.tmp" <<'EOF'
# Gatehouse users. Add one with: gatehouse passwd /etc/gatehouse/htpasswd USER   (or: htpasswd -B /etc/gatehouse/htpasswd USER)
EOF
    )
    if [ "$static_user" -eq 1 ]; then
        chown root:gatehouse "$confdir/htpasswd.tmp"
        chmod 0640 "$confdir/htpasswd.tmp"
    else
        chmod 0644 "$confdir/htpasswd.tmp"
    fi
    mv -f "$confdir/htpasswd.tmp" "$confdir/htpasswd"
    installed+=("$confdir/htpasswd")
fi

echo "==> installed:"
for f in "${installed[@]}"; do
    printf '    %s %s\n' "$(stat -c '%A %U:%G' "$f")" "$f"
done

# --- systemd --------------------------------------------------------------------------------
if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    cat <<EOF
==> next steps:
    gatehouse passwd /etc/gatehouse/htpasswd alice       # add users
    gatehouse check --config /etc/gatehouse/gatehouse.yaml
    systemctl enable --now gatehouse                      # or: systemctl enable --now gatehouse.socket
    journalctl -u gatehouse -f
EOF
elif [ -z "$destdir" ]; then
    echo "==> systemd is not running here; start Gatehouse with: $exec_path --config /etc/gatehouse/gatehouse.yaml"
fi

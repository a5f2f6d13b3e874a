# Shell helpers scripts/test and scripts/bench share: installing Debian packages when missing
# and starting MariaDB. Sourced, not run.

die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_updated=
apt_install() {
    command -v apt-get >/dev/null || die "missing $*; install it with your package manager"
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq || die "apt-get update failed"; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null || die "cannot install $*"
}

# Starts MariaDB at 127.0.0.1:3306 (root, no password, database `test`), installing it first
# when it is missing.
ensure_mariadb() {
    command -v mysql >/dev/null || apt_install mariadb-client
    mysql_ok() { mysql --protocol=tcp -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1; }
    if ! mysql_ok; then
        if [ ! -x /usr/sbin/mariadbd ]; then
            echo "MariaDB is not installed: installing mariadb-server"
            apt_install mariadb-server mariadb-client
        fi
        echo "starting MariaDB"
        as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
            || die "cannot start MariaDB (/usr/sbin/mariadbd)"
        for _ in $(seq 1 60); do
            mysql_ok && break
            # A fresh Debian install lets root in only over the socket: allow the empty password first
            # (sqlx speaks no unix_socket, so a chain that starts with it refuses sqlx).
            if mysql -u root -e 'SELECT 1' >/dev/null 2>&1; then
                mysql -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket" || true
            fi
            sleep 1
        done
        mysql_ok || die "MariaDB does not accept root without a password at 127.0.0.1:3306; the MySQL store tests and the archive benchmark need it"
    fi
    mysql --protocol=tcp -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test'
    echo "MariaDB is up: $(mysql --protocol=tcp -h 127.0.0.1 -u root -N -e 'SELECT VERSION()')"
}

# What building Pigeon needs besides cargo.
ensure_build_deps() {
    command -v cargo >/dev/null || die "cargo is missing: install Rust from rustup"
    # librdkafka is built from source (bundled): it needs a C toolchain, make, pkg-config, OpenSSL
    # (TLS and SASL/SCRAM) and zlib headers.
    missing=()
    for pkg in build-essential pkg-config libssl-dev zlib1g-dev; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ] && command -v dpkg-query >/dev/null; then
        echo "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

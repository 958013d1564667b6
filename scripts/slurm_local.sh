#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback, for bnstudy's cluster tests (make test-cluster).
# Debian 12 (slurm-wlm 22.05 + munge from Debian), run as root, no systemd needed.
#
#   scripts/slurm_local.sh start    install the packages (apt) if missing, start what is not running
#   scripts/slurm_local.sh status   pids of the daemons this script started, sinfo, squeue
#   scripts/slurm_local.sh stop     cancel the cluster's jobs, then stop the daemons this script
#                                   started, by the pid files in $SLURM_LOCAL_DIR/run (never by name)
#
# The cluster: one node "localhost" with this machine's CPUs and memory (as `slurmd -C` reports
# them), one partition $SLURM_LOCAL_PARTITION (default "local", the default partition).
#
# Settings worth knowing:
# - CommunicationParameters=NoInAddrAny,NoCtldInAddrAny: every daemon binds the address the host
#   name resolves to instead of 0.0.0.0, so `hostname` must resolve to 127.x (checked below);
#   nothing listens on another interface.
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups (containers, no systemd).
# - EnforcePartLimits=ALL: a job asking for more than the node has is refused at submission
#   instead of pending forever.
# - DefMemPerCPU=1024: a job without --mem gets 1 GB per CPU, so jobs do not serialise on memory.
# - Accounting (SLURM_LOCAL_ACCOUNTING=1, the default): MariaDB on a unix socket only (no TCP)
#   and slurmdbd, so that `sacct` works. submitit learns a job's state from sacct; without it a
#   job that dies without writing its result leaves the launcher waiting. SLURM_LOCAL_ACCOUNTING=0
#   skips MariaDB and slurmdbd (a quicker install; sacct then fails).
# - AuthInfo=cred_expire=10: a requeued job (after its time limit) may start again 10 s later
#   instead of SLURM's default 120 s; SchedulerParameters=bf_interval=5,sched_interval=5: the
#   schedulers, which start such a job once that delay is over, look every 5 s (defaults 30, 60 s).
# - munged runs as the munge user (it refuses root), as the packaged service would.
#
# Logs: $SLURM_LOCAL_DIR/log/{apt,mariadb,slurmdbd,slurmctld,slurmd}.log, /var/log/munge/munged.log
set -u

STATE=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
PARTITION=${SLURM_LOCAL_PARTITION:-local}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
PIDS=$STATE/run
LOGS=$STATE/log
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
OURS="# bnstudy scripts/slurm_local.sh"
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PASSWORD=bnstudy-slurm   # MariaDB user slurm@localhost; the server listens on the socket only

log() { echo "slurm_local: $*" >&2; }
fail() { log "$*"; exit 1; }

# the pid in FILE, if that process is alive and runs PROGRAM (a recycled pid is not ours)
pid_of() {  # FILE PROGRAM
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  echo "$pid"
}

# poll CMD every 0.25 s for up to SECONDS
until_ok() {  # SECONDS CMD...
  local tries=$(( $1 * 4 )); shift
  while [ "$tries" -gt 0 ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25; tries=$((tries - 1))
  done
  return 1
}

install_packages() {
  local p need=() pkgs=(munge slurmctld slurmd slurm-client)
  [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "apt-get install ${need[*]}"
  # the packages' postinst scripts try to start their services and are refused (no systemd): harmless
  local get=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
  "${get[@]}" "${need[@]}" >"$LOGS/apt.log" 2>&1 && return 0
  apt-get update -q >>"$LOGS/apt.log" 2>&1 && "${get[@]}" "${need[@]}" >>"$LOGS/apt.log" 2>&1 \
    || fail "apt-get install failed, see $LOGS/apt.log"
}

require_loopback() {
  local name addr
  for name in "$(hostname)" localhost; do
    addr=$(getent ahostsv4 "$name" | awk 'NR == 1 { print $1 }')
    case "$addr" in
      127.*) ;;
      *) fail "$name resolves to '${addr:-nothing}', not a loopback address; the daemons would listen there (add '127.0.0.1 $name' to /etc/hosts)" ;;
    esac
  done
}

start_munge() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0   # one is already answering
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key || fail "mungekey failed"
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  rm -f /run/munge/munged.pid
  # munged forks; its own pid file is copied to $PIDS as the record that this script started it
  setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged \
    || fail "munged did not start, see /var/log/munge/munged.log"
  until_ok 10 sh -c 'munge -n | unmunge' || fail "munge does not answer, see /var/log/munge/munged.log"
  until_ok 5 test -s /run/munge/munged.pid && cp /run/munge/munged.pid "$PIDS/munged.pid"
}

sql() { mariadb --protocol=socket --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
  if ! sql -e 'select 1' >/dev/null 2>&1; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGS/mariadb.log" 2>&1 \
        || fail "mariadb-install-db failed, see $LOGS/mariadb.log"
    fi
    # mariadbd stays in the foreground: detach it; it writes its pid file as user mysql, in
    # /run/mysqld, and the copy in $PIDS records that this script started it
    rm -f /run/mysqld/mariadbd-bnstudy.pid
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$DB_SOCKET" \
      --pid-file=/run/mysqld/mariadbd-bnstudy.pid --innodb-lock-wait-timeout=900 \
      </dev/null >>"$LOGS/mariadb.log" 2>&1 &
    until_ok 60 sql -e 'select 1' || fail "MariaDB does not answer, see $LOGS/mariadb.log"
    until_ok 5 test -s /run/mysqld/mariadbd-bnstudy.pid && cp /run/mysqld/mariadbd-bnstudy.pid "$PIDS/mariadbd.pid"
  fi
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "MariaDB: cannot create user slurm"
}

# write FILE from stdin unless it already holds exactly that; keep a foreign file as FILE.orig.
# Returns 0 when the file changed.
put_config() {  # FILE MODE
  local new="$1.new"
  cat >"$new"; chmod "$2" "$new"
  if cmp -s "$new" "$1"; then rm -f "$new"; return 1; fi
  if [ -e "$1" ] && ! grep -q "^$OURS" "$1"; then log "keeping the existing $1 as $1.orig"; mv "$1" "$1.orig"; fi
  mv "$new" "$1"
}

start_slurmdbd() {
  put_config "$DBD_CONF" 600 <<EOF && stop_daemon slurmdbd quiet
$OURS
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$PIDS/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  pid_of "$PIDS/slurmdbd.pid" slurmdbd >/dev/null || /usr/sbin/slurmdbd \
    || fail "slurmdbd did not start, see $LOGS/slurmdbd.log"
  until_ok 30 sacctmgr -n list cluster || fail "slurmdbd does not answer, see $LOGS/slurmdbd.log"
}

write_slurm_conf() {  # returns 0 when slurm.conf changed
  local node accounting
  # e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  node=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
  [ -n "$node" ] || fail "slurmd -C printed no node description"
  if [ "$ACCOUNTING" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
  else
    accounting="AccountingStorageType=accounting_storage/none"
  fi
  mkdir -p /etc/slurm
  put_config "$SLURM_CONF" 644 <<EOF
$OURS: a single-node test cluster on loopback, state in $STATE
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$accounting
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost $node State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

node_ready() { sinfo -h -n localhost -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

start() {
  [ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts system daemons)"
  mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" "$PIDS"
  local t0=$SECONDS
  install_packages
  local t1=$SECONDS
  require_loopback
  start_munge
  local changed=0
  write_slurm_conf && changed=1   # before slurmdbd: sacctmgr reads slurm.conf
  if [ "$ACCOUNTING" = 1 ]; then start_mariadb; start_slurmdbd; fi
  if [ $changed = 1 ]; then   # daemons of ours still running from an older config must reread it
    stop_daemon slurmd quiet; stop_daemon slurmctld quiet
  fi
  pid_of "$PIDS/slurmctld.pid" slurmctld >/dev/null || /usr/sbin/slurmctld \
    || fail "slurmctld did not start, see $LOGS/slurmctld.log"
  until_ok 30 sh -c 'scontrol ping | grep -q UP' || fail "slurmctld does not answer, see $LOGS/slurmctld.log"
  pid_of "$PIDS/slurmd.pid" slurmd >/dev/null || /usr/sbin/slurmd -N localhost \
    || fail "slurmd did not start, see $LOGS/slurmd.log"
  if ! until_ok 30 node_ready; then   # e.g. left DOWN by an earlier, unclean stop
    scontrol update nodename=localhost state=resume >/dev/null 2>&1
    until_ok 30 node_ready || { sinfo -R; fail "the node is not ready, see $LOGS/slurmd.log"; }
  fi
  log "up: install $((t1 - t0)) s, start $((SECONDS - t1)) s"
  sinfo
}

stop_daemon() {  # NAME [quiet]
  local pid waited=0
  if ! pid=$(pid_of "$PIDS/$1.pid" "$1"); then rm -f "$PIDS/$1.pid"; return 0; fi
  kill -TERM "$pid"
  while [ -d "/proc/$pid" ] && [ $waited -lt 120 ]; do sleep 0.25; waited=$((waited + 1)); done
  if [ -d "/proc/$pid" ]; then log "$1 (pid $pid) still running 30 s after SIGTERM: SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$PIDS/$1.pid"
  [ "${2:-}" = quiet ] || log "stopped $1 (pid $pid)"
}

stop() {
  if pid_of "$PIDS/slurmctld.pid" slurmctld >/dev/null; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs
      until_ok 45 sh -c '[ -z "$(squeue -h -t R,CG -o %A)" ]'
    fi
  fi
  local d
  for d in slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$d"; done
}

status() {
  local d pid
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(pid_of "$PIDS/$d.pid" "$d"); then echo "$d: pid $pid"; else echo "$d: not running (or not started by this script)"; fi
  done
  sinfo; squeue
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

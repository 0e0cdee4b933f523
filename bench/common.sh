# Shared by the bench scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# chat_body MODEL STREAM: the benchmark's chat completion request (MODEL is a plain name).
chat_body() {
  printf '{"model":"%s","stream":%s,"max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}' "$1" "$2"
}

# bourse_config SIM_PORT EXTRA_TOML LEDGER_DB: a gateway config in front of the sim at SIM_PORT.
# Bourse routes only to priced models; the price (gpt-4o-mini's) makes metering do real work,
# and quality 1400 ("strong") lets an `auto` route choose it. The ledger is SQLite in
# LEDGER_DB unless EXTRA_TOML has its own [storage]: variants sharing one file would each
# measure the other's rows too.
bourse_config() {
  local sim_port=$1 extra=$2 db=$3
  printf '[providers.sim]\nkind = "openai-compatible"\nbase_url = "http://127.0.0.1:%s/v1"\n\n' "$sim_port"
  printf '[models."sim/sim-small"]\ninput = 0.15\noutput = 0.60\nquality = 1400\n'
  [ -z "$extra" ] || printf '\n%s\n' "$extra"
  case "$extra" in
    *"[storage]"*) ;;
    *) printf '\n[storage]\nurl = "sqlite:%s"\n' "$db" ;;
  esac
}

# wait_port PORT: until something accepts TCP connections on 127.0.0.1:PORT (60 s at most).
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listening on port $1 after 60 s" >&2
  exit 1
}

# The helpers below use the calling script's $WORK (scratch dir), STARTED_PIDS (what its
# cleanup stops) and die().

# wait_ready NAME PID PORT [LOG_PATTERN]: the process is alive, printed LOG_PATTERN (if given)
# and accepts TCP connections on PORT; 30 s at most.
wait_ready() {
  local name=$1 pid=$2 port=$3 pattern=${4:-} i
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited during startup"; }
    if { [ -z "$pattern" ] || grep -qs "$pattern" "$WORK/$name.log"; } &&
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2
  die "$name not ready on port $port after 30 s"
}

# spawn NAME CMD...: start in the background with output in $WORK/NAME.log; sets SPAWNED_PID.
spawn() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  SPAWNED_PID=$!
  STARTED_PIDS+=("$SPAWNED_PID")
}

# Cores busy machine-wide over 0.5 s. Called while our servers idle and no load runs, it is
# what other processes (builds, tests) are taking from the benchmark.
busy_cores() {
  local u1 n1 s1 i1 w1 q1 sq1 st1 u2 n2 s2 i2 w2 q2 sq2 st2 busy total
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
  sleep 0.5
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
  busy=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1)))
  total=$((busy + (i2 + w2) - (i1 + w1)))
  awk -v b="$busy" -v t="$total" -v n="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? b / t * n : 0) }'
}

# start_postgres: a throwaway PostgreSQL cluster in $BENCH_OUT_DIR/pg (kept for reuse, tuned for
# loading, not durability); sets PG_URL, and PG_STOP to the command that stops it (for the
# calling script's cleanup).
start_postgres() {
  local bin dir port as=()
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -x "$bin/initdb" ] || die "PostgreSQL is not installed: run scripts/pg, or set BENCH_PG_URL"
  dir="$BENCH_OUT_DIR/pg"
  if [ "$(id -u)" = 0 ]; then
    as=(runuser -u postgres --)
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ ${#as[@]} -eq 0 ] || chown -R postgres:postgres "$dir"
    (cd "$dir" && "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null)
  fi
  port="$(free_port)"
  (cd "$dir" && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c shared_buffers=1GB -c max_wal_size=1GB" start >/dev/null)
  PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop)
  "${as[@]}" "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'bourse_bench'" | grep -q 1 ||
    "${as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres bourse_bench
  PG_URL="postgres://postgres@127.0.0.1:$port/bourse_bench"
}

#!/bin/sh
# make bench: modelget against curl, wget and aria2c over loopback HTTPS (nginx, the test CA).
#   sh tests/bench.sh BUILD_DIR
# 1. one 1 GiB file: modelget pull with --sha256 vs curl -o, wget -O, aria2c --checksum (best of 3)
# 2. 200 files of 100 KB: one modelget pull -j 8 (200 models) vs curl --parallel --parallel-max 8,
#    aria2c -j8 -i; also modelget pulling them as one model of 200 files (a recipe's side files), and
#    modelget.core alone writing them into one folder (what the store adds, by difference); best of 5;
#    curl --parallel followed by sha256sum and sync (curl's files given modelget's guarantees after)
# 3. the store's file-system floor (tests/bench_floor.c): the same 200 files written flat, in the
#    store's layout, and in that layout made durable, with no transfer, Lua, hash or lock
# Prints wall-clock times, ratios (modelget / other), peak RSS, and the targets beside them.
set -eu
build=$(cd "${1:-build}" && pwd)
modelget=$build/modelget
here=$(cd "$(dirname "$0")" && pwd)
fixtures=$here/fixtures
runs=${BENCH_RUNS:-3}
# The small runs take a tenth of a second each and their times swing with the file system's state
# (see fresh()): five of them each, by default.
small_runs=${BENCH_SMALL_RUNS:-5}
big_size=${BENCH_BIG_BYTES:-1073741824}
small_count=${BENCH_SMALL_COUNT:-200}
small_size=102400

for tool in "$modelget" curl wget aria2c /usr/bin/time nginx openssl python3 cc sha256sum sync; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "bench: $tool is missing (make deps)" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/modelget-bench.XXXXXX")
cleanup() {
  sh "$fixtures/nginx.sh" stop "$tmp/nginx" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench: preparing files in $tmp"
sh "$fixtures/mkcerts.sh" "$tmp/certs"
ca=$tmp/certs/ca.pem
mkdir -p "$tmp/www/small"
head -c "$big_size" /dev/urandom > "$tmp/www/big.bin"
big_sha=$(sha256sum "$tmp/www/big.bin" | cut -d' ' -f1)
python3 - "$tmp/www/small" "$small_count" "$small_size" <<'EOF'
import os, sys
folder, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1, count + 1):
    with open(os.path.join(folder, "f%03d.bin" % i), "wb") as f:
        f.write(os.urandom(size))
EOF
ports=$(sh "$fixtures/nginx.sh" start "$tmp/nginx" "$tmp/www" "$tmp/certs" $$)
base=https://127.0.0.1:${ports%% *}
big_url=$base/big.bin
: > "$tmp/small.urls"
: > "$tmp/small.curlrc"
# The same files as one model: the first its main file, the others side files.
recipe=$tmp/one-model.lua
printf 'framework "other"\nmodel "bench-files" {\n' > "$recipe"
for f in "$tmp"/www/small/*.bin; do
  name=${f##*/}
  echo "$base/small/$name" >> "$tmp/small.urls"
  printf 'url = "%s"\noutput = "%s"\n' "$base/small/$name" "$name" >> "$tmp/small.curlrc"
  if [ "$name" = f001.bin ]; then printf '  url = "%s",\n  files = {\n' "$base/small/$name" >> "$recipe"
  else printf '    { name = "%s", url = "%s" },\n' "$name" "$base/small/$name" >> "$recipe"; fi
done
printf '  },\n}\n' >> "$recipe"

# Each run writes into folders of its own, $out and $store, made by fresh(). The small runs' folders
# are only removed at the end: on a file system that avoids reusing recently deleted inodes (ext4
# without a journal does), deleting hundreds of files just before a run slows every file that run
# creates, and would weigh on whichever tool happens to run next.
mkdir -p "$tmp/times" "$tmp/runs"
runno=0
fresh() {
  runno=$((runno + 1))
  out=$tmp/runs/$runno/out store=$tmp/runs/$runno/store
  mkdir -p "$out"
}

# timed LABEL COMMAND… : runs COMMAND under /usr/bin/time (in the folders fresh() made);
# appends "wall_seconds max_rss_kib user_seconds system_seconds" (or "fail") to $tmp/times/LABEL.
timed() {
  label=$1; shift
  # Every run starts with no write-back pending from the one before (a 1 GiB file is still being
  # flushed when the next run starts, and it slows whoever comes next).
  sync
  start=$(date +%s.%N)
  if /usr/bin/time -f '%M %U %S' -o "$tmp/rss" "$@" >"$tmp/cmd.log" 2>&1; then
    end=$(date +%s.%N)
    echo "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }') $(tail -1 "$tmp/rss")" >> "$tmp/times/$label"
  else
    echo "fail" >> "$tmp/times/$label"
    echo "bench: $label failed:" >&2
    tail -5 "$tmp/cmd.log" >&2
  fi
}
# installed_is PATH SHA256: the run really produced the verified file (checked outside the timing).
installed_is() {
  [ "$(sha256sum "$1" 2>/dev/null | cut -d' ' -f1)" = "$2" ] || { echo "bench: $1 is missing or wrong" >&2; exit 1; }
}
runs_of() { awk '{ printf "%s%s", (NR > 1 ? " " : ""), $1 }' "$tmp/times/$1"; }
best() { awk '$1 != "fail" && (b == "" || $1 < b) { b = $1 } END { print (b == "" ? "fail" : b) }' "$tmp/times/$1"; }
# cpu LABEL: the processor time (user + system, all threads) of the runs, the least of them.
cpu() { awk '$1 != "fail" && (c == "" || $3 + $4 < c) { c = $3 + $4 } END { print (c == "" ? "-" : sprintf("%.2f", c)) }' "$tmp/times/$1"; }
peak() { awk '$1 != "fail" && $2 + 0 >= m { m = $2; n++ } END { if (n) printf "%.1f", m / 1024; else print "-" }' "$tmp/times/$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "fail" || b == "fail" || b == 0) print "-"; else printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v limit="$2" 'BEGIN { if (r == "-") print "no figure"; else print (r + 0 <= limit + 0 ? "met" : "MISSED") }'; }

# The 200 files in one modelget command; a Lua script over pull_many when the command cannot take them.
small_script=$tmp/pull_many.lua
cat > "$small_script" <<'EOF'
local modelget = require "modelget"
local list_file, store, cacert = arg[1], arg[2], arg[3]
local urls = {}
for url in io.lines(list_file) do urls[#urls + 1] = url end
for _, r in ipairs(modelget.pull_many(urls, { framework = "other", jobs = 8, store = store, cacert = cacert, quiet = true })) do
  if not r.ok then io.stderr:write(r.target, ": ", tostring(r.err), "\n"); os.exit(1) end
end
EOF
# The transfer engine alone, for the split: the same 200 files into one folder, as curl writes them
# (no model folders, manifests, locks or fsync). Not a target: it shows what the store's work costs.
engine_script=$tmp/engine_only.lua
cat > "$engine_script" <<'EOF'
local core = require "modelget.core"
local list_file, out, cacert = arg[1], arg[2], arg[3]
local session = core.session { jobs = 8, cacert = cacert }
local left = 0
for url in io.lines(list_file) do
  session:add { url = url, partial = out .. "/" .. url:match("[^/]+$"), fsync = false }
  left = left + 1
end
while left > 0 do
  session:perform(0.25)
  for _, t in ipairs(session:finished()) do
    local r = t:result()
    if not r.ok then io.stderr:write(r.message, "\n"); os.exit(1) end
    t:close()
    left = left - 1
  end
end
session:close()
EOF
small_mode=command
fresh
# shellcheck disable=SC2046
if ! "$modelget" pull $(cat "$tmp/small.urls") --framework other -j 8 --store "$store" -q --cacert "$ca" \
     >"$tmp/cmd.log" 2>&1; then
  small_mode=script
  echo "bench: 'modelget pull URL…' failed for the 200 files; using pull_many through 'modelget run'" >&2
  tail -3 "$tmp/cmd.log" >&2
fi
echo "bench: 1 file of $big_size bytes, $runs runs each"
i=0
while [ $i -lt "$runs" ]; do
  # A big run's folder goes at once (a few files: nothing to slow the next run).
  fresh; timed big.modelget "$modelget" pull "$big_url" --sha256 "$big_sha" --framework other --store "$store" -q --cacert "$ca"
  installed_is "$store/models/other/big/big.bin" "$big_sha"
  rm -rf "$tmp/runs/$runno"
  fresh; timed big.curl curl -sS --cacert "$ca" -o "$out/big.bin" "$big_url"
  rm -rf "$tmp/runs/$runno"
  fresh; timed big.wget wget -q --ca-certificate="$ca" -O "$out/big.bin" "$big_url"
  rm -rf "$tmp/runs/$runno"
  fresh; timed big.aria2c aria2c -q --ca-certificate="$ca" --checksum=sha-256="$big_sha" -d "$out" -o big.bin "$big_url"
  rm -rf "$tmp/runs/$runno"
  i=$((i + 1))
done
echo "bench: $small_count files of $small_size bytes, $small_runs runs each (modelget: $small_mode)"
i=0
while [ $i -lt "$small_runs" ]; do
  fresh
  if [ "$small_mode" = command ]; then
    # shellcheck disable=SC2046
    timed small.modelget "$modelget" pull $(cat "$tmp/small.urls") --framework other -j 8 --store "$store" -q --cacert "$ca"
  else
    timed small.modelget "$modelget" run "$small_script" "$tmp/small.urls" "$store" "$ca"
  fi
  got=$(find "$store/models/other" -name 'f*.bin' -size "${small_size}c" | wc -l)
  [ "$got" -eq "$small_count" ] || { echo "bench: modelget installed $got of the $small_count files" >&2; exit 1; }
  fresh; timed small.curl curl -sS --cacert "$ca" --parallel --parallel-max 8 --output-dir "$out" -K "$tmp/small.curlrc"
  fresh; timed small.curlsync sh -c 'curl -sS --cacert "$1" --parallel --parallel-max 8 --output-dir "$2" -K "$3" &&
    sha256sum "$2"/*.bin > "$2.sha256" && sync -f "$2"' sh "$ca" "$out" "$tmp/small.curlrc"
  fresh; timed small.onemodel "$modelget" pull bench-files --registry "$recipe" -j 8 --store "$store" -q --cacert "$ca"
  got=$(find "$store/models/other/bench-files" -name 'f*.bin' -size "${small_size}c" | wc -l)
  [ "$got" -eq "$small_count" ] || { echo "bench: modelget installed $got of the $small_count files as one model" >&2; exit 1; }
  i=$((i + 1))
done
# aria2c last: it deletes a control file per download, and deleted inodes slow whoever runs next
# (see fresh()); modelget and curl delete nothing.
i=0
while [ $i -lt "$small_runs" ]; do
  fresh; timed small.engine "$modelget" run "$engine_script" "$tmp/small.urls" "$out" "$ca"
  i=$((i + 1))
done
cc -O2 -Wall -Wextra -o "$tmp/bench_floor" "$here/bench_floor.c"
mkdir -p "$tmp/floor"
"$tmp/bench_floor" "$tmp/floor" "$small_count" "$small_size" "$small_runs" > "$tmp/floor.txt"
i=0
while [ $i -lt "$small_runs" ]; do
  fresh; timed small.aria2c aria2c -q --ca-certificate="$ca" -j8 -i "$tmp/small.urls" -d "$out"
  i=$((i + 1))
done

mg_big=$(best big.modelget)
mg_small=$(best small.modelget)
echo
echo "== 1 file of $((big_size / 1048576)) MiB (best of $runs, seconds; modelget verifies and installs, curl and wget do not hash)"
printf '  %-24s %8s   (runs: %s)\n' "modelget pull --sha256" "$mg_big" "$(runs_of big.modelget)"
for tool in curl wget aria2c; do
  t=$(best big.$tool)
  printf '  %-24s %8s   modelget/%s = %s   (runs: %s)\n' "$tool" "$t" "$tool" "$(ratio "$mg_big" "$t")" "$(runs_of big.$tool)"
done
r=$(ratio "$mg_big" "$(best big.curl)")
echo "  target: pull+verify <= 1.10x curl -o   -> $r ($(verdict "$r" 1.10))"
echo
echo "== $small_count files (best of $small_runs, seconds)"
printf '  %-24s %8s   (runs: %s)\n' "modelget pull -j 8" "$mg_small" "$(runs_of small.modelget)"
for tool in curl aria2c; do
  t=$(best small.$tool)
  printf '  %-24s %8s   modelget/%s = %s   (runs: %s)\n' "$tool" "$t" "$tool" "$(ratio "$mg_small" "$t")" "$(runs_of small.$tool)"
done
r=$(ratio "$mg_small" "$(best small.curl)")
echo "  target: <= 1.5x curl --parallel        -> $r ($(verdict "$r" 1.5))"
t=$(best small.onemodel)
printf '  %-24s %8s   modelget/curl = %s   (runs: %s)\n' "as one model of $small_count" "$t" "$(ratio "$t" "$(best small.curl)")" "$(runs_of small.onemodel)"
echo "  (the same files pulled, verified and installed as one model: a recipe's main file and side files)"
t=$(best small.engine)
printf '  %-24s %8s   engine/curl = %s   (runs: %s)\n' "modelget.core alone" "$t" "$(ratio "$t" "$(best small.curl)")" "$(runs_of small.engine)"
echo "  (the transfer engine writing the 200 files into one folder as curl does: no model folder,"
echo "   manifest, lock or fsync per model; the difference is what the store's durable installs cost)"
t=$(best small.curlsync)
printf '  %-24s %8s   modelget/that = %s   (runs: %s)\n' "curl + sha256sum + sync" "$t" "$(ratio "$mg_small" "$t")" "$(runs_of small.curlsync)"
echo "  (curl's files hashed and made durable afterwards: what modelget's install guarantees)"
printf '  processor time (user+system s, least of the runs; the server shares the machine): modelget %s, one model %s, engine %s, curl %s, aria2c %s\n' \
  "$(cpu small.modelget)" "$(cpu small.onemodel)" "$(cpu small.engine)" "$(cpu small.curl)" "$(cpu small.aria2c)"
echo
echo "== the store's file-system floor ($small_count files; the calls alone, one thread, no transfer, Lua, hash or lock; best of $small_runs)"
floor() { awk -v w="$1" '$1 == w { print $2 }' "$tmp/floor.txt"; }
flat=$(floor flat)
for way in flat layout durable; do
  case $way in
    flat) what="flat files, as curl" ;;
    layout) what="model folders, manifests" ;;
    durable) what="the same, made durable" ;;
  esac
  t=$(floor $way)
  printf '  %-24s %8s   +%s over flat   (processor %s s)\n' "$what" "$t" \
    "$(awk -v a="$t" -v b="$flat" 'BEGIN { printf "%.3f", a - b }')" "$(awk -v w=$way '$1 == w { print $3 }' "$tmp/floor.txt")"
done
# The engine's own run plus what the layout and its durability add to flat files: about the least a
# durable install of these files can take here, whoever implements it (if none of it overlapped the
# transfers; on a machine whose processors the server and the transfers keep busy, little does).
lb=$(awk -v e="$(best small.engine)" -v d="$(floor durable)" -v f="$flat" 'BEGIN { if (e == "fail") print "fail"; else printf "%.3f", e + d - f }')
echo "  a durable install's least, about: engine alone + (made durable - flat) = $lb s = $(ratio "$lb" "$(best small.curl)")x curl --parallel"
echo
echo "== peak RSS (MiB, /usr/bin/time)"
for label in big.modelget small.modelget big.curl big.wget big.aria2c small.curl small.aria2c; do
  printf '  %-24s %8s\n' "$label" "$(peak "$label")"
done
rss=$(peak big.modelget)
echo "  target: modelget <= 32 MiB (the big pull) -> $rss ($(verdict "$rss" 32))"

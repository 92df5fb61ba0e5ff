#!/usr/bin/env bash
# Runs a benchmark only on a quiet machine: waits until two consecutive 10 s
# windows are under 5 % CPU busy (from /proc/stat; Linux), then runs the
# command given, printing the start and end with the load average. Gives up
# after 10 minutes of waiting.
#
#   bash scripts/run-quiet.sh cargo bench -p token-keeper-ureq --bench hit_path
set -euo pipefail
quiet=0
deadline=$((SECONDS + 600))
while [ "$quiet" -lt 2 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "run-quiet: the machine did not go quiet within 10 minutes" >&2
        exit 1
    fi
    read -r -a a < <(head -n 1 /proc/stat)
    sleep 10
    read -r -a b < <(head -n 1 /proc/stat)
    total=0
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    busy=$((100 * (total - idle) / total))
    echo "$(date -u +%T) busy ${busy}% load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    if [ "$busy" -lt 5 ]; then quiet=$((quiet + 1)); else quiet=0; fi
done
echo "START $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
"$@"
echo "END $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"

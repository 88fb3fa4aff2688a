#!/bin/sh
# Exec program for test_handlers.py's retry test: flaky.sh COUNTER SUCCEED_ON
# Counts its runs in the file COUNTER and appends "RUN TIME REQUEST-JSON" to COUNTER.log; fails
# (exit 1, a line on stderr) until run number SUCCEED_ON, then prints {"attempt": RUN}.
# A shell script, so a run costs milliseconds and the gaps between runs show the backoff.
set -u
counter=$1
succeed_on=$2
IFS= read -r request || true
n=$(( $(cat "$counter" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$counter"
echo "$n $(date +%s.%N) $request" >> "$counter.log"
if [ "$n" -lt "$succeed_on" ]; then
    echo "run $n fails on purpose" >&2
    exit 1
fi
echo "{\"attempt\": $n}"

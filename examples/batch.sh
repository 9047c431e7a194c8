#!/usr/bin/env bash
# Queue a batch of jobs on comfyui-gateway, then wait until every one has ended.
# Plain bash + curl (+ sed, tr, mktemp): no jq needed.
#
#   GATEWAY       the gateway's base URL              (default http://127.0.0.1:8000)
#   COUNT         how many jobs                       (default 100)
#   JOB_JSON      the request body; @N@ becomes the job's number
#                 (default {"prompt": "a lighthouse at dusk, study @N@", "seed": @N@})
#   API_KEY       sent as "Authorization: Bearer API_KEY" when set
#   POLL_SECONDS  pause between two rounds of GET /jobs/{id} (default 2)
#
# Prints one line per finished job (id, state, image URLs or error) and exits 1 if any failed.
set -euo pipefail

GATEWAY=${GATEWAY:-http://127.0.0.1:8000}
COUNT=${COUNT:-100}
JOB_JSON=${JOB_JSON:-'{"prompt": "a lighthouse at dusk, study @N@", "seed": @N@}'}
POLL_SECONDS=${POLL_SECONDS:-2}
auth=()
if [ -n "${API_KEY:-}" ]; then auth=(-H "Authorization: Bearer $API_KEY"); fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# field NAME < json: the last string value of "NAME" in one line of JSON (the gateway writes
# compact JSON with sorted keys, so a job's top-level "state" comes after "progress"."state").
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
# urls < json: every image URL of a completed job.
urls() { grep -o '"url":"[^"]*"' | sed 's/"url":"\(.*\)"/\1/' | tr '\n' ' '; }

# 1. Queue: POST /jobs answers 202 {"job_id", "status_url", "events_url"} at once.
jobs=()
for ((n = 1; n <= COUNT; n++)); do
  body=${JOB_JSON//@N@/$n}
  while :; do
    status=$(curl -sS -o "$tmp/answer" -D "$tmp/head" -w '%{http_code}' ${auth[@]+"${auth[@]}"} \
      -H 'Content-Type: application/json' -d "$body" "$GATEWAY/jobs")
    [ "$status" = 429 ] || break
    # MAX_QUEUED_JOBS jobs waiting already: wait as long as Retry-After says, then retry.
    sleep "$(tr -d '\r' < "$tmp/head" | sed -n 's/^[Rr]etry-[Aa]fter: *//p' | grep . || echo 1)"
  done
  if [ "$status" != 202 ]; then
    echo "job $n was refused (HTTP $status): $(cat "$tmp/answer")" >&2
    exit 1
  fi
  jobs+=("$(field job_id < "$tmp/answer")")
done
echo "queued ${#jobs[@]} jobs"

# 2. Wait: GET /jobs/{id} until its state is completed, failed or cancelled.
pending=("${jobs[@]}")
completed=0
failed=0
while [ ${#pending[@]} -gt 0 ]; do
  still=()
  for id in "${pending[@]}"; do
    curl -sS ${auth[@]+"${auth[@]}"} "$GATEWAY/jobs/$id" > "$tmp/job"
    state=$(field state < "$tmp/job")
    case "$state" in
      completed)
        completed=$((completed + 1))
        echo "$id completed $(urls < "$tmp/job")" ;;
      failed | cancelled)
        failed=$((failed + 1))
        echo "$id $state: $(field message < "$tmp/job")" ;;
      *) still+=("$id") ;;
    esac
  done
  pending=(${still[@]+"${still[@]}"})
  if [ ${#pending[@]} -gt 0 ]; then sleep "$POLL_SECONDS"; fi
done
echo "completed: $completed of ${#jobs[@]}"
[ "$failed" -eq 0 ]

#!/usr/bin/env python3
"""Queue a batch of jobs on comfyui-gateway, then wait until every one has ended.

Needs only `requests` (pip install requests). Settings come from the environment:

  GATEWAY       the gateway's base URL              (default http://127.0.0.1:8000)
  COUNT         how many jobs                       (default 100)
  JOB_JSON      the request body; @N@ becomes the job's number
                (default {"prompt": "a lighthouse at dusk, study @N@", "seed": @N@})
  API_KEY       sent as "Authorization: Bearer API_KEY" when set
  POLL_SECONDS  pause between two rounds of GET /jobs/{id} (default 2)

Prints one line per finished job (id, state, image URLs or error) and exits 1 if any failed.
"""
import json
import os
import sys
import time

import requests

GATEWAY = os.environ.get("GATEWAY", "http://127.0.0.1:8000").rstrip("/")
COUNT = int(os.environ.get("COUNT", "100"))
JOB_JSON = os.environ.get("JOB_JSON", '{"prompt": "a lighthouse at dusk, study @N@", "seed": @N@}')
POLL_SECONDS = float(os.environ.get("POLL_SECONDS", "2"))

session = requests.Session()
if os.environ.get("API_KEY"):
    session.headers["Authorization"] = "Bearer " + os.environ["API_KEY"]


def queue(n):
    """POST /jobs answers 202 {"job_id", "status_url", "events_url"} at once."""
    body = json.loads(JOB_JSON.replace("@N@", str(n)))
    while True:
        answer = session.post(f"{GATEWAY}/jobs", json=body, timeout=60)
        if answer.status_code != 429:
            break
        # MAX_QUEUED_JOBS jobs waiting already: wait as long as Retry-After says, then retry.
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    if answer.status_code != 202:
        sys.exit(f"job {n} was refused (HTTP {answer.status_code}): {answer.text}")
    return answer.json()["job_id"]


def main():
    jobs = [queue(n) for n in range(1, COUNT + 1)]
    print(f"queued {len(jobs)} jobs", flush=True)
    pending, completed, failed = jobs, 0, 0
    while pending:
        still = []
        for job_id in pending:
            job = session.get(f"{GATEWAY}/jobs/{job_id}", timeout=30).json()
            if job["state"] == "completed":
                completed += 1
                urls = " ".join(image["url"] for image in job["result"]["images"])
                print(f"{job_id} completed {urls}")
            elif job["state"] in ("failed", "cancelled"):
                failed += 1
                print(f"{job_id} {job['state']}: {(job['error'] or {}).get('message', '')}")
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(POLL_SECONDS)
    print(f"completed: {completed} of {len(jobs)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

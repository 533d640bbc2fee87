#!/usr/bin/env python3
"""Run a moulin pipeline over a Ray cluster: one Ray task per shard, then the commit.

    python scripts/moulin_ray.py PIPELINE --shards 16 [--address HOST:PORT] [--run-id ID]

Each task runs `moulin run PIPELINE --shard I/N --run-id ID` on a worker (moulin,
its models and the pipeline's sources must be there: a shared file system or
object storage, as for any Ray job); a task that fails is retried on its own
(`--retries`), the others keep their work. When every shard has succeeded, the
driver runs `moulin commit ID PIPELINE`, which makes the whole run visible at
once. If shards still fail after their retries, nothing is committed: the
driver says which, and running it again with the same --run-id reruns them all
(finished shards are redone; their earlier files are never referenced).

Exit code: moulin's commit's, or 2 when shards failed. Needs `ray` (PyPI).
"""

import argparse
import datetime
import json
import os
import secrets
import subprocess
import sys
import tempfile

import ray


def run_shard(moulin, pipeline, index, count, run_id, cwd, env):
    """One shard, on whichever worker Ray chose; its report, or an exception Ray retries."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        proc = subprocess.run(
            [moulin, "run", pipeline, "--shard", f"{index}/{count}", "--run-id", run_id,
             "--quiet", "--report", report],
            cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
        )
        # Exit code 1 means some inputs failed (each named in the report): the shard's
        # work is staged and counts; 2 and beyond mean the shard itself did not finish.
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"shard {index}/{count} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        with open(report) as f:
            totals = json.load(f)["totals"]
        return {"shard": index, "code": proc.returncode, "totals": totals}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", help="the pipeline file, as the workers see it")
    p.add_argument("--shards", type=int, required=True, help="how many shards (Ray tasks)")
    p.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, or a local one)")
    p.add_argument("--run-id", default=None, help="the run's id (default: ray-<time>-<random>)")
    p.add_argument("--moulin", default="moulin", help="the moulin executable on the workers")
    p.add_argument("--cpus", type=float, default=2, help="CPUs each shard takes")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed shard")
    p.add_argument("--cwd", default=os.getcwd(), help="the working directory of the shards")
    args = p.parse_args()
    run_id = args.run_id or datetime.datetime.now(datetime.timezone.utc).strftime("ray-%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    # What the workers need from the driver's environment: object storage
    # settings and moulin's own; credentials travel only to the processes.
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MOULIN_")) and k != "MOULIN_RUN_ID"}

    ray.init(address=args.address, log_to_driver=False)
    task = ray.remote(num_cpus=args.cpus, max_retries=args.retries, retry_exceptions=True)(run_shard)
    futures = [task.remote(args.moulin, args.pipeline, i, args.shards, run_id, args.cwd, env)
               for i in range(args.shards)]
    failed = []
    for i, future in enumerate(futures):
        try:
            result = ray.get(future)
            t = result["totals"]
            print(f"shard {i}/{args.shards}: {t['ingested']} ingested, {t['unchanged']} unchanged, "
                  f"{t['failed']} failed of {t['inputs']}", file=sys.stderr)
        except Exception as e:  # a shard that failed all its attempts
            failed.append(i)
            print(f"shard {i}/{args.shards} failed after {args.retries} retries: {e}", file=sys.stderr)
    ray.shutdown()
    if failed:
        print(f"run {run_id} not committed: shards {', '.join(f'{i}/{args.shards}' for i in failed)} failed; "
              f"run the driver again with --run-id {run_id}", file=sys.stderr)
        return 2
    print(f"run {run_id}: every shard staged; committing", file=sys.stderr)
    return subprocess.run([args.moulin, "commit", run_id, args.pipeline], cwd=args.cwd).returncode


if __name__ == "__main__":
    sys.exit(main())

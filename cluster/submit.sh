#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster with `ray job submit`. Idempotent: the entry point is
# `l2d-sweep run SPEC --or-resume`, so submitting the same spec again resumes the sweep in its storage
# instead of starting over.
#
#   cluster/submit.sh search_spaces/coco2014.yaml [--address http://127.0.0.1:8265]
#
# The address defaults to the dashboard on 127.0.0.1:8265: open a tunnel first
# (`ray dashboard cluster/aws.yaml`, or `kubectl port-forward svc/l2d-sweep-head-svc 8265:8265`).
# With token auth on, export RAY_AUTH_TOKEN (the cluster's token) before submitting.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 SPEC.yaml [--address URL]  (SPEC.yaml must exist)" >&2
    exit 2
fi
spec=$1
shift
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ "${1:-}" = "--address" ]; then
    address=$2
fi
name=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$spec")
exec ray job submit --address "$address" --submission-id "l2d-sweep-$name-$(date +%s)" \
    --working-dir . -- l2d-sweep run "$spec" --or-resume

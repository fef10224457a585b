#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster with `ray job submit`, from any directory.
#
#   cluster/submit.sh SPEC.yaml [--address URL] [-- ARGS for `l2d-sweep run`]
#   cluster/submit.sh search_spaces/coco2014.yaml
#   cluster/submit.sh search_spaces/quickstart.yaml --address http://127.0.0.1:8265 -- --num-samples 2 --max-epochs 1
#
# The repository is the job's working directory (uploaded without what .gitignore leaves out: .venv, runs/...), so
# SPEC.yaml must be inside it. The entry point is `l2d-sweep run SPEC --or-resume`: submitting the same spec again
# resumes the sweep in its storage instead of starting over.
#
# The address defaults to $RAY_ADDRESS, else the dashboard on 127.0.0.1:8265: open a tunnel first
# (`ray dashboard cluster/aws.yaml`, or `kubectl port-forward svc/l2d-sweep-head-svc 8265:8265`).
# The cluster's token is found the way Ray finds it: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or
# ~/.ray/auth_token (cluster/README.md, step 1). Exit status: ray job submit's (0: the sweep succeeded), 2: bad usage.
set -euo pipefail

usage() {
    echo "usage: $0 SPEC.yaml [--address URL] [-- ARGS for l2d-sweep run]" >&2
    exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] || usage
spec=$1
shift
if [ ! -f "$spec" ]; then
    echo "submit.sh: $spec: no such spec file" >&2
    exit 2
fi
spec_path=$(cd "$(dirname "$spec")" && pwd)/$(basename "$spec")
case "$spec_path" in
    "$repo"/*) relative=${spec_path#"$repo"/} ;;
    *)
        echo "submit.sh: $spec is outside the repository $repo, and only the repository travels with the job;" \
             "copy it into $repo/search_spaces/" >&2
        exit 2
        ;;
esac

address=${RAY_ADDRESS:-http://127.0.0.1:8265}
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --address)
            [ $# -ge 2 ] || usage
            address=$2
            shift 2
            ;;
        --)
            shift
            extra=("$@")
            break
            ;;
        *) usage ;;
    esac
done

# The Python that runs `ray` reads the spec's name (it has PyYAML: Ray needs it).
ray_bin=$(command -v ray) || { echo "submit.sh: no \`ray\` on PATH (pip install 'ray[default]==2.60.0')" >&2; exit 2; }
python=$(dirname "$ray_bin")/python
[ -x "$python" ] || python=python3
name=$("$python" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$spec_path")

export RAY_AUTH_MODE=token  # the client sends the token; without one it says where it looked
exec ray job submit --address "$address" --submission-id "l2d-sweep-$name-$(date +%s)" \
    --working-dir "$repo" -- l2d-sweep run "$relative" --or-resume ${extra[@]+"${extra[@]}"}

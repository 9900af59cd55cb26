#!/usr/bin/env bash
# Run the schema-migration Job by hand and tell the operator how it went.
#
# Deletes the previous Job (Jobs are immutable; asks first unless --yes), applies the manifest,
# waits for the pod, follows the migrunner container's log (following retries too), then reports
# from the Job's status and the container's exit code, which migrunner makes meaningful
# (1 migration failed, 2 bad config/input, 4 lock timeout or lock lost, 5 database unreachable, 6 drift).
# Finally it prints `migrunner status` and `migrunner lock status`, run in a copy of the Job's
# pod (kubectl debug --copy-to) so they see the same files, env and secrets as the run itself.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: run-migration.sh [OPTIONS]

Apply the migration Job, follow its log and report success or failure.

Options:
  -f, --file FILE          Job manifest (default: migration-job.yaml beside this script)
  -n, --namespace NS       namespace (default: educard)
  -j, --job NAME           Job name, as in the manifest (default: educard-migration)
  -c, --container NAME     migrunner's container in the pod (default: migrate)
      --context NAME       kubectl context to use
  -t, --timeout SECONDS    give up waiting for the pod / the Job after this (default: 1500)
  -y, --yes                delete a previous Job of the same name without asking
      --no-status          skip `migrunner status` / `lock status` afterwards
  -h, --help               show this help

Environment: KUBECTL (kubectl binary, default: kubectl).

Exit status: 0 the Job succeeded; migrunner's exit code when its container failed with one
(1 migration failed, 2 bad config or input, 4 lock timeout or lock lost, 5 database unreachable, 6 drift);
1 any other failure or a declined deletion; 2 usage error.
EOF
}

die_usage() {
  printf 'run-migration: %s\nTry --help.\n' "$*" >&2
  exit 2
}
say() { printf 'run-migration: %s\n' "$*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=$here/migration-job.yaml
namespace=educard
job=educard-migration
container=migrate
context=
timeout=1500
assume_yes=0
show_status=1
kubectl_bin=${KUBECTL:-kubectl}

need_value() { [[ $# -ge 2 && -n $2 && $2 != -* ]] || die_usage "$1 needs a value"; }

while (($#)); do
  case $1 in
    -f | --file) need_value "$@" && file=$2 && shift ;;
    -n | --namespace) need_value "$@" && namespace=$2 && shift ;;
    -j | --job) need_value "$@" && job=$2 && shift ;;
    -c | --container) need_value "$@" && container=$2 && shift ;;
    --context) need_value "$@" && context=$2 && shift ;;
    -t | --timeout) need_value "$@" && timeout=$2 && shift ;;
    -y | --yes) assume_yes=1 ;;
    --no-status) show_status=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
  shift
done

[[ $timeout =~ ^[1-9][0-9]*$ ]] || die_usage "--timeout must be a whole number of seconds, got '$timeout'"
[[ -f $file && -r $file ]] || die_usage "manifest not found: $file"
[[ $job =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die_usage "not a valid Job name: $job"
command -v "$kubectl_bin" >/dev/null 2>&1 || die_usage "kubectl not found (set KUBECTL)"

k() {
  if [[ -n $context ]]; then
    "$kubectl_bin" --context "$context" -n "$namespace" "$@"
  else
    "$kubectl_bin" -n "$namespace" "$@"
  fi
}

deadline=$((SECONDS + timeout))
past_deadline() { ((SECONDS >= deadline)); }

explain_exit() {
  case $1 in
    0) echo "success" ;;
    1) echo "a migration failed and was rolled back (see the log above)" ;;
    2) echo "bad configuration, options or migration files: nothing ran" ;;
    3) echo "migrations are pending" ;;
    4) echo "migration lock: another runner held it too long, or this runner lost it mid-run" ;;
    5) echo "database unreachable, or the connection was lost" ;;
    6) echo "drift: an applied migration's file is missing or was edited" ;;
    137) echo "killed (out of memory, or the Job's activeDeadlineSeconds)" ;;
    *) echo "unexpected exit code" ;;
  esac
}

# 1. A previous Job of the same name: Jobs are immutable, so it must go first.
if k get job "$job" >/dev/null 2>&1; then
  if ((!assume_yes)); then
    printf 'Job %s/%s exists (a previous run). Delete it and its pods? [y/N] ' \
      "$namespace" "$job" >&2
    answer=
    read -r answer || true
    case $answer in
      y | Y | yes | YES) ;;
      *)
        say "not deleting; aborted (use --yes to delete without asking)"
        exit 1
        ;;
    esac
  fi
  say "deleting job/$job"
  k delete job "$job" --cascade=foreground --wait=true >/dev/null
fi

# 2. Apply.
k apply -f "$file" >&2

# 3. Follow every pod the Job starts (backoffLimit retries make new ones) until it finishes.
newest_pod() {
  k get pods -l "job-name=$job" --sort-by=.metadata.creationTimestamp \
    -o jsonpath='{.items[-1:].metadata.name}' 2>/dev/null || true
}
container_state() {
  k get pod "$1" -o jsonpath="{.status.containerStatuses[?(@.name==\"$container\")].state}" \
    2>/dev/null || true
}
job_outcome() {
  local types
  types=$(k get job "$job" -o jsonpath='{.status.conditions[?(@.status=="True")].type}' \
    2>/dev/null || true)
  case " $types " in
    *" Complete "*) echo complete ;;
    *" Failed "*) echo failed ;;
    *) echo running ;;
  esac
}

followed=" "
outcome=running
while :; do
  outcome=$(job_outcome)
  pod=$(newest_pod)
  if [[ -n $pod && $followed != *" $pod "* ]]; then
    state=$(container_state "$pod")
    if [[ $state == *running* || $state == *terminated* ]]; then
      say "following pod/$pod (container $container)"
      k logs -f "pod/$pod" -c "$container" || true
      followed+="$pod "
      continue
    fi
  fi
  [[ $outcome != running ]] && break
  if past_deadline; then
    say "timed out after ${timeout}s waiting for job/$job (pod: ${pod:-none yet})"
    if [[ -n ${pod:-} ]]; then
      k describe pod "$pod" | tail -n 20 >&2 || true
    fi
    exit 1
  fi
  sleep 2
done

# 4. Report from the Job's status and the container's exit code.
pod=$(newest_pod)
code=
if [[ -n $pod ]]; then
  code=$(k get pod "$pod" -o \
    jsonpath="{.status.containerStatuses[?(@.name==\"$container\")].state.terminated.exitCode}" \
    2>/dev/null || true)
fi
if [[ $outcome == complete ]]; then
  say "job/$job succeeded"
  result=0
else
  reason=$(k get job "$job" -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}' \
    2>/dev/null || true)
  if [[ $code =~ ^[0-9]+$ && $code != 0 ]]; then
    say "job/$job failed (${reason:-Failed}): migrunner exited $code: $(explain_exit "$code")"
    result=$code
  else
    say "job/$job failed (${reason:-Failed}); no migrunner exit code (init or scheduling failure?)"
    result=1
  fi
fi

# 5. Where the database stands now, seen by a copy of the Job's pod (same files and env).
if ((show_status)) && [[ -n $pod ]]; then
  cmdline=()
  while IFS= read -r word; do
    [[ -n $word ]] && cmdline+=("$word")
  done < <(k get pod "$pod" -o jsonpath="{range .spec.containers[?(@.name==\"$container\")]}{range .command[*]}{@}{\"\\n\"}{end}{range .args[*]}{@}{\"\\n\"}{end}{end}" 2>/dev/null || true)
  # Keep the common options (config, paths, env, table...); drop the command and its own flags.
  common=()
  seen_command=0
  skip_next=0
  for word in "${cmdline[@]}"; do
    if ((skip_next)); then
      skip_next=0
      continue
    fi
    if ((!seen_command)); then
      case $word in
        up | down | status | db:migrate | db:migrate:status | db:migrate:undo | db:migrate:undo:all)
          seen_command=1
          ;;
      esac
      continue
    fi
    case $word in
      --to | --name | --step) skip_next=1 ;;
      --dry-run | --all | --exit-code | --json) ;;
      *) common+=("$word") ;;
    esac
  done
  copy="${job}-status-$((RANDOM % 90000 + 10000))"
  say "migrunner status / lock status (pod/$copy, a copy of pod/$pod)"
  # shellcheck disable=SC2016 # "$@" is for the shell inside the pod
  if k debug "$pod" --copy-to="$copy" --container="$container" --attach=false --quiet \
    -- sh -c 'migrunner status "$@"; echo; migrunner lock status "$@"' sh "${common[@]}" \
    >/dev/null 2>&1; then
    while :; do
      phase=$(k get pod "$copy" -o jsonpath='{.status.phase}' 2>/dev/null || true)
      [[ $phase == Succeeded || $phase == Failed ]] && break
      if past_deadline; then
        say "timed out waiting for pod/$copy"
        break
      fi
      sleep 2
    done
    k logs "pod/$copy" -c "$container" || true
    k delete pod "$copy" --wait=false >/dev/null 2>&1 || true
  else
    say "could not start a status pod (kubectl debug --copy-to); the Job's pod may be gone"
  fi
fi

exit "$result"

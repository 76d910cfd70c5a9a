#!/usr/bin/env bash
# `make image`: build the images from the Dockerfiles, with Docker where a daemon answers, else podman
# (--isolation chroot: RUN steps without a container runtime, as on the development machines).
#   images/build.sh [serving] [trainer] [models]      (default: all three)
# Environment: IMAGE_TAG (serving image's tag, cpu), SERVE_EXTRA (serve-cpu: pyproject.toml's extra the serving image installs), ENGINE (docker|podman),
# PULL (always|missing|never; default: the engine's own where Docker Hub answers, else never, with the
# stand-ins of `make base-images`), REGISTRY_URL (the registry to probe, Docker Hub's /v2/). docs/images.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source images/lib.sh

IMAGE_TAG=${IMAGE_TAG:-cpu}
SERVE_EXTRA=${SERVE_EXTRA:-serve-cpu}
engine=$(pick_engine)
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(serving trainer models)

# name -> Dockerfile, tag, context
declare -A FILE=([serving]=serving/Dockerfile [trainer]=trainer/Dockerfile [models]=models/pretrained/Dockerfile)
declare -A TAG=([serving]="inpaint-serving:$IMAGE_TAG" [trainer]=inpaint-trainer:latest [models]=inpaint-models:latest)
declare -A CONTEXT=([serving]=. [trainer]=. [models]=models/pretrained)
for target in "${targets[@]}"; do
    [ -n "${FILE[$target]:-}" ] || die "unknown image '$target': images/build.sh takes serving, trainer and models"
done

# The pull policy: a registry that answers wins (a stand-in under a real name is replaced by the real image);
# without one, the base images must be here already (`make base-images`) and nothing is pulled.
bases=$(for target in "${targets[@]}"; do base_images "${FILE[$target]}"; done | sort -u)
pull=${PULL:-}
if [ -z "$pull" ]; then
    if registry_answers; then
        for base in $bases; do
            if image_exists "$engine" "$base" && \
               [ -n "$("$engine" image inspect --format "{{ index .Config.Labels \"$STAND_IN_LABEL\" }}" "$base" 2>/dev/null | grep -v '<no value>')" ]; then
                note "$base: $(registry_name) answers, replacing the local stand-in with the real image"
                "$engine" pull "$base" >&2
            fi
        done
    else
        pull=never
        for base in $bases; do
            image_exists "$engine" "$base" || die "base image $base is not here and $(registry_name) does not answer: run \`make base-images\` (local stand-ins from Debian packages, see docs/images.md), or point REGISTRY_URL at a registry that answers"
        done
        note "$(registry_name) does not answer: building on the local base images ($(echo $bases)) with --pull=never"
    fi
fi

pull_flags=()
case "$engine:$pull" in
    *:) ;;
    podman:always|podman:missing|podman:never) pull_flags=(--pull="$pull") ;;
    docker:always) pull_flags=(--pull) ;;
    docker:missing|docker:never) ;;   # docker build's default: the local image if there is one
    *) die "PULL=$pull: use always, missing or never" ;;
esac
engine_flags=()
[ "$engine" = podman ] && engine_flags=(--isolation chroot)

summary=()
for target in "${targets[@]}"; do
    build_args=()
    [ "$target" = serving ] && build_args=(--build-arg "SERVE_EXTRA=$SERVE_EXTRA")
    note "$engine build ${TAG[$target]} (${FILE[$target]})"
    start=$SECONDS
    "$engine" build "${engine_flags[@]}" "${pull_flags[@]}" "${build_args[@]}" \
        -f "${FILE[$target]}" -t "${TAG[$target]}" "${CONTEXT[$target]}"
    seconds=$((SECONDS - start))
    size=$("$engine" image inspect --format '{{.Size}}' "${TAG[$target]}")
    summary+=("$(printf '%-26s %8.1f MB %6d s' "${TAG[$target]}" "$(awk -v bytes="$size" 'BEGIN { print bytes / 1e6 }')" "$seconds")")
done
note "built with $engine:"
printf '    %s\n' "${summary[@]}" >&2

# Shared by images/build.sh and images/base-images.sh: which engine builds, whether the registry answers,
# and which base images the Dockerfiles name. Source it; it defines functions only.

# The Dockerfiles, by the short name build.sh takes; each image's tag and build context.
DOCKERFILES=(serving/Dockerfile trainer/Dockerfile models/pretrained/Dockerfile)

die() { echo "error: $*" >&2; exit 1; }
note() { echo "==> $*" >&2; }

# ENGINE (docker or podman) if set, else Docker where a daemon answers, else podman.
pick_engine() {
    case "${ENGINE:-}" in
        docker|podman) command -v "$ENGINE" >/dev/null || die "ENGINE=$ENGINE but $ENGINE is not installed"
                       echo "$ENGINE"; return ;;
        "") ;;
        *) die "ENGINE=$ENGINE: use ENGINE=docker, ENGINE=podman or leave it empty (Docker if a daemon answers, else podman)" ;;
    esac
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
    command -v podman >/dev/null && { echo podman; return; }
    die "no Docker daemon answers and podman is not installed: start Docker, or apt-get install podman (see docs/images.md)"
}

registry_name() { echo "${REGISTRY_URL:-Docker Hub}"; }

# Whether Docker Hub answers (401 to an anonymous /v2/ is an answer). REGISTRY_URL points elsewhere (a mirror).
registry_answers() {
    local url="${REGISTRY_URL:-https://registry-1.docker.io/v2/}" code
    command -v curl >/dev/null || return 0   # cannot tell: assume it does, as a plain `docker build` would
    code=$(curl -s -o /dev/null -m "${REGISTRY_TIMEOUT:-5}" -w '%{http_code}' "$url") || code=000
    [ "$code" != 000 ]
}

# The base images a Dockerfile's FROM lines name, ARG defaults substituted, earlier stages left out.
base_images() {
    awk '
        toupper($1) == "ARG" && !seen_from { split($2, kv, "="); if (kv[2] != "") args[kv[1]] = kv[2] }
        toupper($1) == "FROM" {
            seen_from = 1; image = ""
            for (i = 2; i <= NF; i++) if ($i !~ /^--/) { image = $i; break }
            for (name in args) { gsub("\\$\\{" name "\\}", args[name], image); gsub("\\$" name, args[name], image) }
            if (!(image in stages)) print image
            if (toupper($(NF - 1)) == "AS") stages[$NF] = 1
        }' "$@" | sort -u
}

# The name an image goes by in local storage: podman keeps Docker Hub's short names fully qualified.
qualified() {
    case "$1" in
        */*/*|localhost/*) echo "$1" ;;
        */*) case "${1%%/*}" in *.*|*:*) echo "$1" ;; *) echo "docker.io/$1" ;; esac ;;
        *) echo "docker.io/library/$1" ;;
    esac
}

image_exists() {  # ENGINE IMAGE
    if [ "$1" = podman ]; then podman image exists "$(qualified "$2")"; else docker image inspect "$2" >/dev/null 2>&1; fi
}

# The label every stand-in carries, so a real image is never mistaken for one.
STAND_IN_LABEL=io.inpaint.stand-in

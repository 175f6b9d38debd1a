#!/bin/sh
# Container entrypoint: fetch the weights on the first start, then exec the command.
#
# `ib-vectorizer serve` (the image's CMD) loads the checkpoint at $IB_CHECKPOINT
# (/models/imagebind_huge.pth, a volume). When that file is missing it is downloaded
# there once (~4.5 GB; an interrupted download resumes from its .part file on the next
# start); when it is present nothing is fetched. Nothing is fetched either for random
# weights (IB_RANDOM_WEIGHTS / --random-weights), for `serve --help`, or for any other
# command, which runs as given:
#   docker run IMAGE                          -> ib-vectorizer serve
#   docker run IMAGE serve --max-batch 64     -> ib-vectorizer serve --max-batch 64
#   docker run IMAGE embed --modality text .. -> ib-vectorizer embed ...
#   docker run IMAGE bash                     -> bash
set -eu

is_true() {  # the booleans ib-vectorizer accepts
    case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

if [ "$#" -eq 0 ]; then
    set -- ib-vectorizer serve
fi
case "$1" in
    serve | download | embed | bench | -*) set -- ib-vectorizer "$@" ;;
esac

# Is this `ib-vectorizer [...] serve [...]` (and not just its --help), and with which
# checkpoint? Flags win over the environment, as in ib-vectorizer itself.
serving=0
asks_help=0
checkpoint="${IB_CHECKPOINT:-}"
random_weights="${IB_RANDOM_WEIGHTS:-0}"
if [ "$1" = ib-vectorizer ]; then
    previous=
    for arg in "$@"; do
        case "$previous" in
            --checkpoint) checkpoint="$arg" ;;
            --random-weights) random_weights="$arg" ;;
        esac
        case "$arg" in
            serve) serving=1 ;;
            -h | --help | --version) asks_help=1 ;;
            --checkpoint=*) checkpoint="${arg#*=}" ;;
            --random-weights=*) random_weights="${arg#*=}" ;;
        esac
        previous="$arg"
    done
fi

if [ "$serving" = 1 ] && [ "$asks_help" = 0 ] && ! is_true "$random_weights"; then
    if [ -z "$checkpoint" ]; then
        # No path given: the server uses the default cache path; fetch it there
        # (`download` returns at once when the file is already present).
        ib-vectorizer download --quiet
    elif [ ! -e "$checkpoint" ]; then
        directory="$(dirname "$checkpoint")"
        if [ -d "$directory" ] && [ ! -w "$directory" ]; then
            echo "ib-entrypoint: $directory is not writable by uid $(id -u), so the weights" \
                "cannot be downloaded there; chown the mounted directory to $(id -u), or" \
                "put imagebind_huge.pth there yourself" >&2
            exit 1
        fi
        echo "ib-entrypoint: no weights at $checkpoint; downloading imagebind_huge" \
            "(~4.5 GB, licence CC-BY-NC-SA 4.0: non-commercial use only) once" >&2
        # A progress bar only on a terminal (docker run -it): in `docker logs` it would
        # be one endless line. Progress can be watched as the size of "$checkpoint.part".
        quiet=--quiet
        if [ -t 2 ]; then
            quiet=
        fi
        ib-vectorizer download ${quiet:+"$quiet"} --output "$checkpoint"
    fi
fi

exec "$@"

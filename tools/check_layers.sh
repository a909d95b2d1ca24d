#!/bin/bash
# check_layers.sh [ROOT]: the include rule of the source tree (README "Layout").
# Each folder of src/ (and cuda/) may include headers from the folders listed for it and
# from itself, nothing else: no include goes up or sideways. Prints every violation as
# file:line and exits 1 when there is one.
set -u
root=${1:-.}
declare -A allowed=(
    [core]="core"
    [backend]="core backend"
    [cuda]="core backend cuda"
    [nn]="core backend nn"
    [data]="core data"
    [parallel]="core backend nn data parallel"
    [train]="core backend nn data parallel train"
    [cli]="core backend nn data parallel train cli"
)
layer_of() { # src/backend/cpu/x.c -> backend; cuda/x.cu -> cuda; "nn/net.h" -> nn
    local p=${1#src/}; echo "${p%%/*}"
}
bad=0
while IFS= read -r file; do
    from=$(layer_of "$file")
    [ -n "${allowed[$from]+x}" ] || { echo "$file: folder '$from' has no rule in $0"; bad=1; continue; }
    while IFS=: read -r line inc; do
        [[ $inc == */* ]] || continue             # same folder (or a system header)
        to=${inc%%/*}
        [ -n "${allowed[$to]+x}" ] || continue     # not one of ours (e.g. <sys/...> style)
        case " ${allowed[$from]} " in
            *" $to "*) ;;
            *) echo "$file:$line: $from/ includes \"$inc\" ($to/ is not below $from/)"; bad=1 ;;
        esac
        # a private header (*_internal.h) is its own folder's
        if [[ $inc == *_internal.h && $to != "$from" ]]; then
            echo "$file:$line: \"$inc\" is private to $to/"; bad=1
        fi
    done < <(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$root/$file" |
             sed 's/^\([0-9]*\):.*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1:\2/')
done < <(cd "$root" && find src cuda -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
if [ $bad = 0 ]; then echo "check-layers: every include goes down (src/, cuda/)"; fi
exit $bad

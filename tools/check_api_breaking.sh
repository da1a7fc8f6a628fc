#!/usr/bin/env bash
# `buf breaking` against the committed API of main, so a change that breaks
# clients fails `make lint` (and so CI).
#
# "The committed API of main" is a moving target: on a developer's branch it
# is main's tip (the merge base), but CI runs on a clean clone of main itself,
# where main's tip *is* the change under test and comparing with it proves
# nothing; nor can CI tell which earlier commit was the last one it passed.
# So the rule checked does not depend on where it runs:
#
#   every commit that changed a .proto is compared with its parent, and the
#   working tree (uncommitted edits) with HEAD.
#
# On a branch that covers the commits about to land; on main it covers every
# commit that ever landed, whichever submission brought it. A commit that
# breaks the API can therefore never pass, even when a later commit is stacked
# on it. It costs one `buf breaking` per proto-changing commit (well under a
# second each). A deliberate break belongs in a new package version
# (chronicle.v2) beside the old one, which this check allows.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
buf=${BUF:-$root/node_modules/.bin/buf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mapfile -t module_list < <(sed -n 's/^ *- path: *//p' buf.yaml)

# The API as of one commit, with the current buf.yaml listing only the modules
# that commit has (a plugin added later is new API, not a break) and, given
# a second commit, only those that one has too (so a commit that adds a
# module compares the modules it had before; one that removes a module
# still compares more modules than it has left, which buf reports).
extract() {
    local rev=$1 dir=$2 also=${3:-} present=() module
    mkdir -p "$dir"
    cp buf.yaml "$dir/buf.yaml"
    for module in "${module_list[@]}"; do
        if git cat-file -e "$rev:$module" 2>/dev/null && { [[ -z $also ]] || git cat-file -e "$also:$module" 2>/dev/null; }; then
            present+=("$module")
        else
            # Its entry, and its files named under an ignore (buf refuses a path in no module).
            sed -i -e "\#^ *- path: $module\$#d" -e "\#^ *- $module/#d" "$dir/buf.yaml"
        fi
    done
    ((${#present[@]})) || return 1
    git archive "$rev" -- "${present[@]}" | tar -x -C "$dir"
}

failed=0
checked=0
# Oldest first, so the first break reported is the one that caused the rest.
for rev in $(git rev-list --reverse HEAD -- "${module_list[@]}"); do
    git cat-file -e "$rev^" 2>/dev/null || continue # the first commit, or a shallow clone's edge
    extract "$rev" "$work/$rev/new" "$rev^" || continue
    extract "$rev^" "$work/$rev/old" || continue
    checked=$((checked + 1))
    if ! (cd "$work/$rev/new" && "$buf" breaking . --against ../old); then
        echo "breaking API change in commit $(git log -1 --format='%h %s' "$rev")" >&2
        failed=1
    fi
done
if extract HEAD "$work/head"; then
    checked=$((checked + 1))
    if ! "$buf" breaking . --against "$work/head"; then
        echo "breaking API change in the working tree (against HEAD)" >&2
        failed=1
    fi
fi
if ((failed)); then
    exit 1
fi
echo "buf breaking: no breaking change in $checked comparisons (each proto-changing commit, and the working tree)"

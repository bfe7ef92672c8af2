#!/usr/bin/env bash
# Make `snakemake --profile slurm` work from the repository root: link workflow/profiles/slurm to
# the per-user profile folder snakemake searches (${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm).
# `make setup` runs it. Idempotent. A profile of the user's own under that name is never
# replaced: one line says so (and how to use ours anyway), and the script exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
src="$(pwd)/workflow/profiles/slurm"
dest="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm"
if [ -L "$dest" ] && [ "$(readlink "$dest")" = "$src" ]; then
    echo "install_profile.sh: $dest -> $src (already)"
    exit 0
fi
if [ -e "$dest" ] || [ -L "$dest" ]; then
    if [ -f "$dest/config.yaml" ] && cmp -s "$dest/config.yaml" "$src/config.yaml"; then
        echo "install_profile.sh: $dest already holds this profile"
    else
        echo "install_profile.sh: $dest is a profile of your own; left as is (use --profile workflow/profiles/slurm for ours)" >&2
    fi
    exit 0
fi
mkdir -p "$(dirname "$dest")"
ln -s "$src" "$dest"
echo "install_profile.sh: $dest -> $src"

#!/usr/bin/env bash
# Make `snakemake --profile slurm` work from the repository root: link workflow/profiles/slurm to
# the per-user profile folder snakemake searches (${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm).
# Idempotent; refuses to replace a different profile of the same name.
set -euo pipefail
cd "$(dirname "$0")/../.."
src="$(pwd)/workflow/profiles/slurm"
dest="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm"
mkdir -p "$(dirname "$dest")"
if [ -L "$dest" ] && [ "$(readlink "$dest")" = "$src" ]; then
    echo "install_profile.sh: $dest -> $src (already)"
    exit 0
fi
if [ -e "$dest" ] || [ -L "$dest" ]; then
    echo "install_profile.sh: $dest exists and is not a link to $src; leaving it" >&2
    exit 1
fi
ln -s "$src" "$dest"
echo "install_profile.sh: $dest -> $src"

#!/usr/bin/env bash
# Make the Fashion-MNIST IDX files available offline. Looks where toroid.data looks
# ($TOROID_DATA/fashion-mnist, then the Debian location); installs the Debian package
# dataset-fashion-mnist when it can (apt and root), otherwise says how to get the files.
set -euo pipefail
system_dir=/usr/share/datasets/fashion-mnist
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

has_all() {
  local dir=$1 f
  for f in "${files[@]}"; do
    [[ -f $dir/$f || -f $dir/$f.gz ]] || return 1
  done
}

if [[ -n ${TOROID_DATA:-} ]] && has_all "$TOROID_DATA/fashion-mnist"; then exit 0; fi
if has_all "$system_dir"; then exit 0; fi

if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  has_all "$system_dir" && exit 0
fi

cat >&2 <<MSG
Fashion-MNIST files not found. Either install the Debian package as root
  (apt-get install dataset-fashion-mnist), or download the four IDX files
  (${files[*]}, optionally .gz) from https://github.com/zalandoresearch/fashion-mnist
  and put them in \$TOROID_DATA/fashion-mnist/ (or pass root= to toroid.data.load).
MSG
exit 1

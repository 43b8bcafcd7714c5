#!/bin/bash
# `make rpm-builder`: the SRPM and RPMs of the builder itself (spec/mkosi-initrd-builder.spec):
#   source tarball -> SRPM -> RPMs rebuilt from that SRPM -> rpmlint
# Everything goes under one directory (default out/rpm-builder):
#   src/     the spec and Source0, as a dist-git checkout would hold them
#   SRPMS/   the source RPM          RPMS/noarch/  the binary RPMs
#   rpmbuild.log, rpmlint.log
# Source0 holds the files git tracks (and new files it does not ignore), as they are in the work
# tree, with the owner, mode and mtime normalised, so the same tree gives the same bytes; every
# timestamp, in the tarball and the RPMs, is the spec's newest changelog entry.
# MKOSI_INITRD_PYTHON3_SITELIB overrides %python3_sitelib; by default it is rpm's own, else (rpm
# without Python macros, as Debian's) Debian's /usr/lib/python3/dist-packages.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$TOP/out/rpm-builder}")
SPEC=$TOP/spec/mkosi-initrd-builder.spec

log() { printf '[rpm-builder %(%H:%M:%S)T] %s\n' -1 "$*"; }
. "$TOP/tools/rpmlint-check.sh"
cd "$TOP"
export LC_ALL=C TZ=UTC

SITELIB=${MKOSI_INITRD_PYTHON3_SITELIB:-$(rpm --eval '%{?python3_sitelib}')}
if [[ -z $SITELIB ]]; then
    SITELIB=/usr/lib/python3/dist-packages
    log "rpm defines no %python3_sitelib: using $SITELIB"
fi
DEFINES=(--define "python3_sitelib $SITELIB" --define "_buildhost localhost")

query() { rpmspec "${DEFINES[@]}" -q --srpm --qf "$1" "$SPEC"; }
NAME=$(query '%{name}')
VERSION=$(query '%{version}')
SDE=$(query '%{changelogtime}')
export SOURCE_DATE_EPOCH=$SDE

rm -rf "$OUT"
mkdir -p "$OUT"/{src,SRPMS,RPMS,build,home}
cp "$SPEC" "$OUT/src/"
log "Source0: $NAME-$VERSION.tar.gz"
git -C "$TOP" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
    | sort -z \
    | tar --create --null --no-recursion --format=gnu --owner=0 --group=0 --numeric-owner \
          --mtime="@$SDE" --mode=u+w,go-w,a+rX --transform="flags=r;s,^,$NAME-$VERSION/," --files-from=- \
    | gzip -n -9 > "$OUT/src/$NAME-$VERSION.tar.gz"
# The SRPM records its files' mtimes as they are.
touch -d "@$SDE" "$OUT/src/$NAME-$VERSION.tar.gz" "$OUT/src/$(basename "$SPEC")"

# HOME: no ~/.rpmmacros of the user's; rpmlint reads %python3_sitelib from the one written here.
printf '%%python3_sitelib %s\n' "$SITELIB" > "$OUT/home/.rpmmacros"
# --nodeps: rpmbuild checks BuildRequires against this host's rpm database, which on Debian holds
# none of them (the build uses the host's python3, pip, setuptools and wheel).
RPMBUILD=(env HOME="$OUT/home" rpmbuild --nodeps "${DEFINES[@]}" --define "_topdir $OUT/build"
          --define "_srcrpmdir $OUT/SRPMS" --define "_rpmdir $OUT/RPMS")
log "building the SRPM"
"${RPMBUILD[@]}" --define "_sourcedir $OUT/src" -bs "$OUT/src/$(basename "$SPEC")" > "$OUT/rpmbuild.log" 2>&1 || {
    tail -n 30 "$OUT/rpmbuild.log" >&2; exit 1; }
SRPM=$(ls "$OUT"/SRPMS/*.src.rpm)
log "building the RPMs from $(basename "$SRPM")"
"${RPMBUILD[@]}" --rebuild "$SRPM" >> "$OUT/rpmbuild.log" 2>&1 || {
    tail -n 30 "$OUT/rpmbuild.log" >&2; log "rpmbuild failed, see $OUT/rpmbuild.log"; exit 1; }
rm -rf "$OUT/build"

log "rpmlint"
HOME="$OUT/home" rpmlint_check spec/mkosi-initrd-builder.rpmlintrc "$OUT/src/$(basename "$SPEC")" "$SRPM" \
    "$OUT"/RPMS/*/*.rpm

log "done: $OUT"
find "$OUT" -name '*.rpm' -printf '%10s  %P\n' | sort -k2

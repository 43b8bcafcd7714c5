#!/bin/bash
# `make rpm`: the maintainer's local build of mkosi-initrd-initrd from the test build tag's repository.
#   tag repo -> render the spec (fixture variants) -> stage its BuildRequires -> SRPM
#   -> RPMs rebuilt from that SRPM against the staged repository -> rpmlint
# MKOSI_INITRD_REPO and MKOSI_INITRD_KVER in the environment replace that repository.
# Everything goes under one directory (default out/rpm):
#   src/     the rendered spec and its Sources, as a dist-git checkout would hold them
#   SRPMS/   the source RPM          RPMS/<arch>/  the binary RPMs
#   stage/   the staged offline repository (RPMs, repodata, stage-manifest.json)
#   build/   rpmbuild's work area    rpmbuild.log, rpmlint.log
# The fixture variants are used because the product variants (spec/variants) need Fedora RPMs.
# rpmbuild runs with --nodeps: it checks BuildRequires against this host's rpm database, which
# does not hold them (they are in the repository given as %mkosi_initrd_repo).
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$TOP/out/rpm}")
PY=${PY:-$TOP/.venv/bin/python}
# The builder finds mkosi and ukify on PATH; those `make setup` extracted go first.
case ":$PATH:" in *":$TOP/.tools/bin:"*) ;; *) export PATH="$TOP/.tools/bin:$PATH" ;; esac
PACKAGER=${MKOSI_INITRD_PACKAGER:-mkosi-initrd developers <mkosi-initrd@localhost>}

log() { printf '[rpm %(%H:%M:%S)T] %s\n' -1 "$*"; }
. "$TOP/tools/rpmlint-check.sh"
cd "$TOP"

REPO=${MKOSI_INITRD_REPO:-}
KVER=${MKOSI_INITRD_KVER:-}
if [[ -n "$REPO" && -n "$KVER" ]]; then
    log "repository $REPO (kernel $KVER), from the environment"
else
    # The fixture RPMs, the buildroot's tools and the builder's own RPMs, as the test build tag
    # serves them: the spec BuildRequires the tools too.
    log "build tag repository (fixture content, buildroot tools, the builder)"
    { read -r REPO; read -r KVER; } < <("$PY" -m tests.support.kojicontent repo -q)
    log "  $REPO (kernel $KVER)"
fi

rm -rf "$OUT"
mkdir -p "$OUT"/{src,SRPMS,RPMS,build}
log "rendering the spec"
"$PY" -m mkosi_initrd_builder --quiet spec --kernel-version "$KVER" --repo "$REPO" \
    --variants-dir tests/fixtures/variants --packager "$PACKAGER" --output "$OUT/src/mkosi-initrd-initrd.spec"

# What koji's plugin does in a buildroot, done from the spec: resolve its BuildRequires against
# the repository with dnf and stage exactly that closure, verified, as the offline repository.
log "staging the spec's BuildRequires from $REPO"
"$PY" -m mkosi_initrd_builder --quiet stage --source "$REPO" --spec "$OUT/src/mkosi-initrd-initrd.spec" \
    --dest "$OUT/stage" --cache "$TOP/build/stage-cache"
STAGED=$OUT/stage

RPMBUILD=(rpmbuild --nodeps --define "_topdir $OUT/build" --define "_srcrpmdir $OUT/SRPMS"
          --define "_rpmdir $OUT/RPMS" --define "_buildhost localhost")
log "building the SRPM"
"${RPMBUILD[@]}" --define "_sourcedir $OUT/src" -bs "$OUT/src/mkosi-initrd-initrd.spec" > "$OUT/rpmbuild.log" 2>&1 || {
    tail -n 30 "$OUT/rpmbuild.log" >&2; exit 1; }
SRPM=$(ls "$OUT"/SRPMS/*.src.rpm)
# --rebuild unpacks the SRPM into build/SOURCES and build/SPECS, and removes them afterwards.
log "building the RPMs from $(basename "$SRPM")"
start=$SECONDS
"${RPMBUILD[@]}" --rebuild --define "mkosi_initrd_repo $STAGED" \
    --define "mkosi_initrd_build $TOP/.venv/bin/mkosi-initrd-build" "$SRPM" >> "$OUT/rpmbuild.log" 2>&1 || {
    tail -n 30 "$OUT/rpmbuild.log" >&2; log "rpmbuild failed, see $OUT/rpmbuild.log"; exit 1; }
log "  rpmbuild took $((SECONDS - start))s"
rm -rf "$OUT/build"

log "rpmlint"
rpmlint_check spec/rpmlintrc "$OUT/src/mkosi-initrd-initrd.spec" "$SRPM" "$OUT"/RPMS/*/*.rpm

log "done: $OUT"
find "$OUT" -name '*.rpm' -printf '%10s  %P\n' | sort -k2

# Sourced by make-rpm.sh and make-builder-rpm.sh (which define log and OUT): rpmlint with the
# given rpmlintrc over the given spec and RPMs, output in $OUT/rpmlint.log; on errors the log is
# shown and the script stops. Its summary line is printed either way.
rpmlint_check() {
    local rc=$1; shift
    if ! rpmlint -r "$rc" "$@" > "$OUT/rpmlint.log" 2>&1; then
        cat "$OUT/rpmlint.log" >&2
        log "rpmlint reported errors"
        exit 1
    fi
    tail -n 1 "$OUT/rpmlint.log"
}

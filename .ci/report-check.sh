#!/usr/bin/env bash
# The CI recipe of docs/ci.md on one example: record the quickstart, write
# every report format, and check the outputs (JUnit against docs/junit.xsd,
# the Perfetto trace decoded back, the SVGs well-formed, the Markdown under
# 1 MiB and deterministic, --fail-on failing on findings). Exits non-zero on
# any failure. Run from anywhere; uses CARGO_TARGET_DIR if set.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "report-check: FAILED: $*" >&2; exit 1; }
step() { printf '\n=== report-check: %s ===\n' "$*"; }

if ! command -v xmllint >/dev/null 2>&1; then
  step "install xmllint (libxml2-utils)"
  (apt-get update -qq && apt-get install -y -qq libxml2-utils) >/dev/null 2>&1 \
    || fail "xmllint is missing and could not be installed"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=${CARGO_TARGET_DIR:-target}

step "build"
cargo build -q -p awaitscope-tui --bin awaitscope
bin="$target/debug/awaitscope"
[ -x "$bin" ] || fail "no binary at $bin"

step "record the quickstart example"
AWAITSCOPE_RECORD="$work/quickstart.rec" AWAITSCOPE_ADDR=off \
  cargo run -q --example quickstart >/dev/null 2>&1 || fail "the example failed"
[ -s "$work/quickstart.rec" ] || fail "no recording written"

step "report in every format"
set +e
"$bin" report "$work/quickstart.rec" \
  --format json,text,perfetto,chrome,junit,markdown,folded,svg,github \
  --out-dir "$work/out" --fail-on error
code=$?
set -e
# The quickstart logs an ERROR on purpose: --fail-on error must fail (1).
[ "$code" = 1 ] || fail "--fail-on error exited $code, expected 1"
for f in report.json report.txt trace.perfetto-trace trace.chrome.json junit.xml \
         summary.md flame-pending.folded flame-busy.folded flame-pending.svg \
         flame-busy.svg annotations.txt; do
  [ -s "$work/out/$f" ] || fail "$f missing or empty"
done

step "JUnit against docs/junit.xsd"
xmllint --noout --schema docs/junit.xsd "$work/out/junit.xml" || fail "junit.xml is not valid"
grep -q '<failure ' "$work/out/junit.xml" || fail "junit.xml has no failure for the findings"

step "Perfetto trace decoded back"
"$bin" report --verify-perfetto "$work/out/trace.perfetto-trace" || fail "invalid Perfetto trace"

step "Chrome trace is JSON"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["traceEvents"] and "size_policy" in d["otherData"]' \
  "$work/out/trace.chrome.json" || fail "invalid Chrome trace"

step "SVGs well-formed"
xmllint --noout "$work/out/flame-pending.svg" "$work/out/flame-busy.svg" || fail "SVG not well-formed"

step "Markdown under 1 MiB and deterministic"
size=$(wc -c <"$work/out/summary.md")
[ "$size" -lt 1048576 ] || fail "summary.md is $size bytes"
"$bin" report "$work/quickstart.rec" --format markdown --out "$work/again.md" 2>/dev/null
"$bin" report "$work/quickstart.rec" --format markdown --out "$work/again2.md" 2>/dev/null
cmp -s "$work/again.md" "$work/again2.md" || fail "Markdown differs between two runs"

step "GitHub annotations"
n=$(wc -l <"$work/out/annotations.txt")
[ "$n" -le 10 ] || fail "$n annotations (at most 10)"
grep -q '^::error file=' "$work/out/annotations.txt" || fail "no annotation"

echo
echo "report-check: 8 passed, 0 failed"

#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end libraries from the npm registry, at the versions
# pinned in app/static/package.json. The files are committed and shipped inside the Python
# package, so neither the service nor its users ever fetch them from a CDN.
set -euo pipefail
cd "$(dirname "$0")/../app/static"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(python3 -c 'import json; print(json.load(open("package.json"))["dependencies"]["chart.js"])')"
(cd "$work" && npm pack "chart.js@${version}" --silent >/dev/null && tar xzf chart.js-*.tgz)
cp "$work/package/dist/chart.umd.min.js" vendor/chart.umd.min.js
cp "$work/package/LICENSE.md" vendor/chart.js.LICENSE.md
echo "vendored chart.js ${version}"

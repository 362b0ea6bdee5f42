#!/usr/bin/env bash
# Takes the README's screenshots of pexper-desktop under Xvfb (software OpenGL), clicking through
# the screens with xdotool. Needs: apt-get install xvfb xdotool imagemagick libgl1-mesa-dri
#     cargo build --bin pexper-desktop && services/desktop/screenshots/take.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=services/desktop/screenshots
data=$(mktemp -d)
mkdir -p "$data/data/workflows" "$out"
cat > "$data/data/workflows/summarise.json" <<'JSON'
{"id":"summarise","name":"Summarise notes","provider":"ollama","model":"llama3.2","prompt":"Summarise my meeting notes in three bullet points."}
JSON
cat > "$data/data/workflows/draft.json" <<'JSON'
{"id":"draft","name":"Draft reply","provider":"anthropic","model":"claude-sonnet-4-5","prompt":"Draft a short, friendly reply."}
JSON
export DISPLAY=:97 LIBGL_ALWAYS_SOFTWARE=1
Xvfb "$DISPLAY" -screen 0 1024x768x24 >/dev/null 2>&1 & xvfb=$!
trap 'kill $xvfb $app 2>/dev/null || true; rm -rf "$data"' EXIT
sleep 1
target/debug/pexper-desktop --data-dir "$data" >/dev/null 2>&1 & app=$!
sleep 5
shot() { sleep 1; import -window root -crop 800x600+0+0 "$out/$1.png"; }
shot consent
xdotool mousemove 73 78 click 1            # "Keep everything off"
xdotool mousemove 152 50 click 1; shot workflows   # the local workflow: "stays on this device"
for screen in "providers 148" "privacy 240" "licence 306" "data 365"; do
    set -- $screen
    xdotool mousemove "$2" 18 click 1
    shot "$1"
done
echo "screenshots in $out"

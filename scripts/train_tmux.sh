#!/usr/bin/env bash
# Start main.py in a detached tmux session, its output also appended to RUN_DIR/tmux.log.
# Running it again after the session ended resumes the run (main.py picks up ckpt_latest.pth).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/train_tmux.sh SESSION -- <main.py arguments>

  Starts `python main.py <arguments>` in a detached tmux session named SESSION, from the repo
  root, with $PYTHON, else .venv/bin/python, else python3. Output is shown in the session and
  appended to OUTPUT/MODEL.NAME/TAG/tmux.log (the run dir of those arguments).
  Run the same command again after the session ended (crash, reboot, Ctrl-C) to resume.

example:
  scripts/train_tmux.sh arcpsa -- --cfg configs/arcpsa_swin.yaml --data-path dataset --batch-size 32
  tmux attach -t arcpsa        # watch; detach again with Ctrl-b d
EOF
}

if [[ $# -lt 2 || $2 != "--" || $1 == -* ]]; then
    usage >&2
    exit 2
fi
session=$1
shift 2

if ! command -v tmux >/dev/null 2>&1; then
    echo "error: tmux is not installed (Debian/Ubuntu: sudo apt-get install tmux; macOS: brew install tmux)" >&2
    exit 1
fi
if tmux has-session -t "=$session" 2>/dev/null; then
    echo "tmux session '$session' already exists; attach with: tmux attach -t $session"
    exit 0
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3

# The run dir is main.py's own answer for these arguments (also checks them before detaching).
run_dir=$("$python" main.py --print-run-dir "$@" | tail -n 1
) || { echo "error: main.py does not accept these arguments (see above)" >&2; exit 2; }
mkdir -p "$run_dir"
log="$run_dir/tmux.log"

# tee -i ignores Ctrl-C so that main.py can finish its step, save and say so in the log.
inner="set -o pipefail; export PYTHONUNBUFFERED=1; $(printf '%q ' "$python" main.py "$@") 2>&1 | tee -a -i $(printf '%q' "$log")"
# The exit code also goes to the log, so a later look (or a script) can tell how the run ended.
inner+="; code=\$?; echo \"main.py exited with code \$code\" >> $(printf '%q' "$log")"
inner+="; echo; echo \"main.py exited with code \$code (log: $(printf '%q' "$log"))\""
inner+="; read -r -p 'press Enter to close this tmux session ' _"
tmux new-session -d -s "$session" -c "$PWD" bash -c "$inner"

echo "started tmux session '$session' in $PWD"
echo "  attach: tmux attach -t $session   (detach: Ctrl-b d)"
echo "  log:    $log"
echo "  resume: run this same command again after the session ended"

#!/usr/bin/env bash
# One virtual environment per peer guardrail framework, outside the repository, for bench/peers/run.py.
#
#   bash bench/peers/setup.sh                 # all peers
#   bash bench/peers/setup.sh nemo llm_guard  # some of them
#
# Where: ${PEERS_VENVS:-/work/peer-venvs}/<peer>. Python: ${PEERS_PYTHON:-python3}.
# Each environment gets, in this order: torch==2.13.0 (FIRST: llm-guard would otherwise pull a newer
# torch with CUDA wheels), the peer, then qwenguard itself (editable, with the `local` extra) for the
# judge and the scripted stream. Every install is dry-run first; the script stops if the dry run
# would bring in a different torch or any CUDA (nvidia-*) wheel.
# Not part of CI: the peers are large and some pin old transformers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENVS="${PEERS_VENVS:-/work/peer-venvs}"
PY="${PEERS_PYTHON:-python3}"
TORCH="torch==2.13.0"

# peer name -> what pip installs for it (after torch, before qwenguard)
declare -A PEER_PACKAGES=(
  [nemo]="nemoguardrails langchain-openai"
  [guardrails_ai]="guardrails-ai"
  [llm_guard]="llm-guard openai"
  [langchain_pii]="langchain>=1.0 langchain-openai"
)
# installed over the peer afterwards (pip reports the conflict; see README)
declare -A PEER_OVERRIDES=(
  [llm_guard]="transformers>=4.55"
)
ALL_PEERS=(nemo guardrails_ai llm_guard langchain_pii)

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Dry-run `pip install "$@"`; refuse a torch other than 2.13.0 or any CUDA wheel.
checked_install() {
  local pip="$1"; shift
  local plan
  plan="$("$pip" install --dry-run "$@" 2>&1)" || { echo "$plan" | tail -20; return 1; }
  local would
  would="$(echo "$plan" | grep '^Would install' || true)"
  log "dry run: ${would:-nothing new}"
  if echo "$would" | tr ' ' '\n' | grep -Eq '^(torch-[0-9]|nvidia-|triton-)' \
     && ! echo "$would" | tr ' ' '\n' | grep -Eq '^torch-2\.13\.0(\+cpu)?$'; then
    echo "refusing: the dry run would install a different torch or CUDA wheels:" >&2
    echo "$would" >&2
    return 1
  fi
  if echo "$would" | tr ' ' '\n' | grep -Eq '^(nvidia-|triton-)'; then
    echo "refusing: the dry run would install CUDA wheels:" >&2
    echo "$would" >&2
    return 1
  fi
  "$pip" install "$@" 2>&1 | grep -Ev '^(Requirement already satisfied|Collecting|Downloading|  Using cached|Using cached)' | tail -15
}

setup_peer() {
  local peer="$1"
  local venv="$VENVS/$peer"
  local pip="$venv/bin/pip"
  log "== $peer -> $venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$PY" -m venv "$venv"
  fi
  "$pip" install -q --upgrade pip setuptools wheel >/dev/null
  checked_install "$pip" "$TORCH"
  # shellcheck disable=SC2086
  checked_install "$pip" ${PEER_PACKAGES[$peer]}
  if [[ -n "${PEER_OVERRIDES[$peer]:-}" ]]; then
    # shellcheck disable=SC2086
    checked_install "$pip" ${PEER_OVERRIDES[$peer]}
  fi
  checked_install "$pip" -e "$REPO[local]"
  "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, f"CUDA torch: {torch.version.cuda}"
names = ["torch", "transformers", "nemoguardrails", "guardrails-ai", "llm-guard", "langchain",
         "langchain-core", "langchain-openai", "openai", "qwenguard"]
found = []
for n in names:
    try:
        found.append(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        pass
print("  installed:", " ".join(found))
EOF
}

peers=("$@")
if [[ ${#peers[@]} -eq 0 ]]; then peers=("${ALL_PEERS[@]}"); fi
mkdir -p "$VENVS"
for peer in "${peers[@]}"; do
  if [[ -z "${PEER_PACKAGES[$peer]:-}" ]]; then
    echo "unknown peer '$peer' (known: ${ALL_PEERS[*]})" >&2
    exit 2
  fi
  setup_peer "$peer"
done
log "done: ${peers[*]}"

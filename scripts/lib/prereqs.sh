# Prerequisites shared by scripts/demo and scripts/test; sourced, not run. Every step is
# idempotent: it checks first and installs only what is missing, so running a script
# twice costs seconds. Targets a fresh Debian 12 (bookworm) or newer machine.

LLMC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export LLMC_ROOT

APT_PACKAGES=(
    build-essential pkg-config curl ca-certificates python3 python3-venv unzip
    llvm-19-dev libpolly-19-dev libzstd-dev
)

say() { echo "==> $*" >&2; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: need root to run: $* (no sudo found)" >&2
        return 1
    fi
}

ensure_apt_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing apt packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"
    fi
}

# The oldest rustc the code builds with (it uses `is_multiple_of`, stable in 1.87).
RUST_MIN_MINOR=87

rust_too_old() {
    local v
    v="$(rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')"
    [[ -z "$v" || "$v" -lt "$RUST_MIN_MINOR" ]]
}

ensure_rust() {
    if [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        source "$HOME/.cargo/env"
    fi
    if command -v cargo >/dev/null && rust_too_old; then
        if command -v rustup >/dev/null; then
            # Use a current stable for this script only; the user's default stays.
            say "rustc is older than 1.$RUST_MIN_MINOR: using rustup's stable toolchain"
            rustup toolchain install stable --profile minimal -c rustfmt -c clippy
            export RUSTUP_TOOLCHAIN=stable
        else
            say "rustc is older than 1.$RUST_MIN_MINOR and not from rustup: installing rustup"
        fi
    fi
    if ! command -v cargo >/dev/null || rust_too_old; then
        say "installing Rust (rustup, stable)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --component rustfmt,clippy
        # shellcheck disable=SC1091
        source "$HOME/.cargo/env"
    fi
    if command -v rustup >/dev/null; then
        local have
        have="$(rustup component list --installed 2>/dev/null || true)"
        for c in rustfmt clippy; do
            grep -q "^$c" <<<"$have" || rustup component add "$c"
        done
    fi
}

ensure_llvm_env() {
    if [[ -z "${LLVM_SYS_191_PREFIX:-}" && -d /usr/lib/llvm-19 ]]; then
        export LLVM_SYS_191_PREFIX=/usr/lib/llvm-19
    fi
}

ensure_venv() {
    local venv="$LLMC_ROOT/.venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        say "creating Python venv $venv"
        python3 -m venv "$venv"
    fi
    # numpy for fixture scripts; gguf + safetensors + tokenizers for the GGUF -> Hugging
    # Face conversion that fetch-models runs (no torch: that stays with the reference
    # scripts under scripts/reference/).
    # openai: the real client, for the server's end-to-end test (scripts/test-serve).
    if ! "$venv/bin/python" -c 'import numpy, gguf, safetensors, tokenizers, openai' 2>/dev/null; then
        say "installing numpy gguf safetensors tokenizers openai into $venv"
        "$venv/bin/python" -m pip install --quiet numpy gguf safetensors tokenizers openai
    fi
    export PATH="$venv/bin:$PATH"
}

# NVIDIA's tools from PyPI wheels, which check CUDA builds without a GPU: ptxas
# (nvidia-cuda-nvcc-cu12) assembles every kernel for sm_80/sm_90, nvdisasm
# (nvidia-cuda-nvdisasm) shows the SASS (the CUDA test checks the tensor-core
# instructions and that no kernel touches local memory). llmc finds them through
# LLMC_PTXAS / LLMC_NVDISASM or in the venv.
# find_wheel_file VENV PATH...: the first existing site-packages/PATH, or nothing.
# Never fails: under `set -o pipefail` an `ls` of a missing glob would end the
# calling script (exit 2) on a fresh machine.
find_wheel_file() {
    local venv="$1" f rel
    shift
    for rel in "$@"; do
        for f in "$venv"/lib/python3*/site-packages/"$rel"; do
            [[ -e "$f" ]] && { echo "$f"; return 0; }
        done
    done
    return 0
}

# ensure_wheel_tool [--optional] WHEEL VAR PATH...: installs WHEEL into the venv when
# none of the PATHs is there (a failed install ends the set-up, or with --optional
# leaves the tool out), makes the tool executable and exports VAR with its path.
ensure_wheel_tool() {
    local optional=0
    if [[ "$1" == --optional ]]; then
        optional=1
        shift
    fi
    local wheel="$1" var="$2" venv="$LLMC_ROOT/.venv" p
    shift 2
    p="$(find_wheel_file "$venv" "$@")"
    if [[ -z "$p" ]]; then
        say "installing $wheel into $venv"
        if ! "$venv/bin/python" -m pip install --quiet "$wheel"; then
            ((optional)) || return 1
        fi
        p="$(find_wheel_file "$venv" "$@")"
    fi
    if [[ -n "$p" && ! -x "$p" ]]; then
        chmod +x "$p"
    fi
    if [[ -n "$p" ]]; then
        export "$var=$p"
    fi
}

ensure_ptxas() {
    ensure_wheel_tool nvidia-cuda-nvcc-cu12 LLMC_PTXAS nvidia/cuda_nvcc/bin/ptxas
}

ensure_nvdisasm() {
    ensure_wheel_tool --optional nvidia-cuda-nvdisasm LLMC_NVDISASM \
        nvidia/cu13/bin/nvdisasm nvidia/cuda_nvdisasm/bin/nvdisasm
}

ensure_models() {
    "$LLMC_ROOT/scripts/fetch-models"
}

ensure_all() {
    ensure_apt_packages
    ensure_rust
    ensure_llvm_env
    ensure_venv
    ensure_ptxas
    ensure_nvdisasm
    ensure_models
}

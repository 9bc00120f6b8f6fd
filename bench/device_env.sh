# bench/device_env.sh — SOURCE this at the start of a device command to get Ray + Optuna + MLflow there:
#     source bench/device_env.sh && python bench/search_efficiency.py ...
#     source bench/device_env.sh && python -m tuner.run ...
# Device `run` call shape (make the archive here first: bash bench/device_pack.sh):
#     carry: [".gpu_py"]      command: "source bench/device_env.sh && python bench/search_efficiency.py ..."
# The CIFAR data pack (~51 MB, carry [".gpu_data"]) must travel in a SEPARATE call: both exceed the 64 MiB limit.
# /tmp/site survives between calls while the machine stays warm, so a later call that does not carry .gpu_py
# (e.g. the data call) can still source this file: it then reuses what an earlier call unpacked.
#
# What it does: unpacks .gpu_py/site.tar.xz into $TUNER_DEVICE_SITE (default /tmp/site) unless that already holds
# this archive (sha256), restores execute bits on Ray's binaries, exports PYTHONPATH and PATH (bin/: ray, mlflow,
# optuna, ... launchers), puts _fallback/<pkg> on PYTHONPATH for any device package older than the shipped packages
# need (typing-extensions), warns about other unmet requirements, and prints one line of ray/optuna/mlflow versions.
# Returns non-zero with one line on stderr if the archive is missing (and nothing was unpacked before) or the
# imports fail. Needs: bash, tar, xz (or python3's lzma), sha256sum, python3 with `packaging`.

_tde_main() {
    local root arc site sum have py fb line f
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
    arc=$root/.gpu_py/site.tar.xz
    site=${TUNER_DEVICE_SITE:-/tmp/site}
    py=${PYTHON:-python3}

    have=$(cat "$site/.archive-sha256" 2>/dev/null || true)
    if [ -f "$arc" ]; then
        sum=$(sha256sum "$arc" | cut -d' ' -f1) || return 1
        if [ "$sum" != "$have" ]; then
            rm -rf "$site.partial" && mkdir -p "$site.partial" || return 1
            if command -v xz >/dev/null; then
                xz -dc -T0 "$arc" | tar -x -C "$site.partial" -f - ||
                    { echo "device_env: cannot unpack $arc into $site" >&2; return 1; }
            else
                "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
                    "$arc" "$site.partial" || { echo "device_env: cannot unpack $arc into $site" >&2; return 1; }
            fi
            echo "$sum" >"$site.partial/.archive-sha256"
            rm -rf "$site" && mv "$site.partial" "$site" || return 1
        fi
    elif [ -n "$have" ] && [ -d "$site/ray" ]; then
        echo "device_env: $arc not carried in this call; reusing $site unpacked earlier (sha256 ${have:0:12})" >&2
    else
        echo "device_env: $arc is missing (make it with bench/device_pack.sh and carry \".gpu_py\") and $site is empty" >&2
        return 1
    fi

    # execute bits: launchers and every ELF executable of Ray's (gcs_server, raylet, ...)
    chmod 755 "$site"/bin/* 2>/dev/null || true
    while IFS= read -r -d '' f; do
        if [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then chmod 755 "$f"; fi
    done < <(find "$site/ray/core" -type f -print0 2>/dev/null)
    for f in "$site/ray/core/src/ray/gcs/gcs_server" "$site/ray/core/src/ray/raylet/raylet"; do
        [ -x "$f" ] || { echo "device_env: $f missing or not executable" >&2; return 1; }
    done

    # device packages too old for the shipped ones: use the fallback copy (prints the dirs to prepend), warn on others
    fb=$("$py" - "$site" <<'PYEOF'
import importlib.metadata as md, os, sys
site = sys.argv[1]
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    print("device_env: WARNING: no `packaging` on the device: device requirements not checked", file=sys.stderr)
    sys.exit(0)
use, unmet = set(), []
for line in open(os.path.join(site, ".device-requires.txt")):
    by, _, r = line.rstrip("\n").partition("\t")
    req = Requirement(r)
    try:
        v = md.version(req.name)
    except md.PackageNotFoundError:
        v = None
    if v is not None and req.specifier.contains(v, prereleases=True):
        continue
    fb = os.path.join(site, "_fallback", canonicalize_name(req.name))
    if os.path.isdir(fb):
        use.add(fb)
    else:
        unmet.append(f"{by} needs {r}, device has {v or 'none'}")
for u in sorted(set(unmet)):
    print("device_env: WARNING:", u, file=sys.stderr)
for d in sorted(use):
    print(f"device_env: using fallback {os.path.basename(d)} (device's is too old or missing)", file=sys.stderr)
print(":".join(sorted(use)))
PYEOF
    )

    case ":${PYTHONPATH:-}:" in *":$site:"*) ;; *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    if [ -n "$fb" ]; then export PYTHONPATH="$fb:$PYTHONPATH"; fi
    case ":$PATH:" in *":$site/bin:"*) ;; *) export PATH="$site/bin:$PATH" ;; esac

    line=$("$py" -c 'import ray, optuna, mlflow, sys; print(f"device_env: python {sys.version.split()[0]}, ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}")' 2>&1) ||
        { echo "device_env: import of ray/optuna/mlflow failed: $(printf '%s\n' "$line" | tail -n1)" >&2; return 1; }
    echo "$line" | tail -n1
}

_tde_main
_tde_rc=$?
unset -f _tde_main
if [ "$_tde_rc" -ne 0 ]; then
    unset _tde_rc
    # shellcheck disable=SC2317  # exit is reached only when the file is run instead of sourced
    return 1 2>/dev/null || exit 1
fi
unset _tde_rc

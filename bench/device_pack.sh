#!/usr/bin/env bash
# bench/device_pack.sh — pack Ray + Optuna + MLflow (and the dependencies the GPU device image lacks) into
# ONE small archive, .gpu_py/site.tar.xz (+ .gpu_py/MANIFEST.txt), for the device machine.
#
# Run HERE (needs pip access to the package registry), from anywhere in the repo:
#     bash bench/device_pack.sh            # FORCE=1 rebuilds even when nothing changed
# Versions: each package is pinned to the version installed in .venv (ray[tune], optuna, mlflow, mlflow-skinny,
# mlflow-tracing and their Requires-Dist closure for Linux / CPython 3.12), cp312 manylinux x86_64 wheels.
# Packages the device image already has (DEVICE_HAS below) are not shipped. Wheels are cached outside the repo in
# ${TUNER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner-device-wheels}, so .gpu_py holds only the archive and
# the manifest. Extra packages: DEVICE_PACK_EXTRA="name==ver other==ver" bash bench/device_pack.sh
# Fails (exit 1) if the archive is over MAX_MIB (default 45) MiB.
#
# Device use (the device tool's `run`; the tree + carried paths must stay under 64 MiB in one call):
#     carry: [".gpu_py"]
#     command: source bench/device_env.sh && python bench/search_efficiency.py ...
#          or: source bench/device_env.sh && python -m tuner.run ...
# The CIFAR data pack (~51 MB, carried as ".gpu_data") goes in a SEPARATE call: both together exceed 64 MiB.
# bench/device_env.sh unpacks the archive into /tmp/site (kept between calls while the machine stays warm).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
CACHE=${TUNER_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner-device-wheels}
OUT=$ROOT/.gpu_py
MAX_MIB=${MAX_MIB:-45}
ARCHIVE=$OUT/site.tar.xz
MANIFEST=$OUT/MANIFEST.txt

# Python packages the device image already has (pip names): never shipped.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer click cloudpickle cmake colorama contourpy coverage cycler cython einops filelock flatbuffers
fonttools frozenlist fsspec grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig jinja2 joblib kiwisolver lxml markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes msgpack multidict
networkx numpy opencv-python-headless packaging pandas pathspec pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 pygments pyparsing pytest pytest-timeout pytest-xdist python-dateutil pyyaml
regex requests rich safetensors scikit-learn scipy setuptools six sortedcontainers sympy tabulate tensorboard
threadpoolctl tqdm typer typing-extensions urllib3 werkzeug wheel wrapt xxhash yarl zipp torch torchvision triton"

[ -x "$PY" ] || { echo "device_pack: $PY not found (set PY=/path/to/python with pip + packaging)" >&2; exit 1; }
mkdir -p "$CACHE" "$OUT"
grep -qxF '/.gpu_py/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_py/' >>"$ROOT/.git/info/exclude"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/device-pack.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
SITE=$STAGE/site
mkdir -p "$SITE"

# ---- 1. closure + download (cached) + unpack + launchers: one Python step ---------------------------------------
export DEVICE_HAS CACHE SITE STAGE DEVICE_PACK_EXTRA="${DEVICE_PACK_EXTRA:-}" FALLBACK_PKGS="${FALLBACK_PKGS-typing-extensions}"
"$PY" - <<'PYEOF'
import importlib.metadata as md, os, re, subprocess, sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.tags import cpython_tags, compatible_tags
from packaging.version import Version

CACHE, SITE, STAGE = os.environ["CACHE"], os.environ["SITE"], os.environ["STAGE"]
DEVICE = {canonicalize_name(n) for n in os.environ["DEVICE_HAS"].split()}
# manylinux platforms, preferred first (pip matches each N exactly)
PLATS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
         "manylinux1_x86_64", "manylinux_2_5_x86_64", "manylinux2010_x86_64", "manylinux_2_12_x86_64",
         "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64",
         "manylinux_2_39_x86_64"]
TAGS = set(cpython_tags((3, 12), platforms=PLATS)) | set(compatible_tags((3, 12), "cp312", platforms=PLATS))
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "",
       "implementation_version": "3.12.3"}

def venv_version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

def cached_wheel(name, spec):
    best = None
    for f in os.listdir(CACHE):
        if not f.endswith(".whl"):
            continue
        try:
            n, v, _, tags = parse_wheel_filename(f)
        except Exception:
            continue
        if n == name and v in spec and tags & TAGS and (best is None or v > best[0]):
            best = (v, f)
    return best and best[1]

def metadata(whl):
    with zipfile.ZipFile(os.path.join(CACHE, whl)) as z:
        meta = next(p for p in z.namelist() if p.count("/") == 1 and p.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(meta).decode("utf-8"))

want = {}      # name -> (Requirement pinned, set(extras))
why = {}       # name -> who asked
device_reqs = []  # (requirer, requirement on a device package)
warnings = []

def add(req, by):
    name = canonicalize_name(req.name)
    if name in DEVICE:
        device_reqs.append((by, str(req)))
        return
    asked.append((name, by, req))
    if name in want:
        pin, extras = want[name]
        if not set(req.extras) <= extras:  # new extras: walk its Requires-Dist again
            want[name] = (pin, extras | set(req.extras)); pending.add(name)
        return
    v = venv_version(req.name)
    if v is None:
        warnings.append(f"{name} is not installed in .venv: taking the newest wheel matching {req.specifier or 'any'}")
        pin = Requirement(f"{name}{req.specifier}")
    else:
        pin = Requirement(f"{name}=={v}")
    want[name] = (pin, set(req.extras)); why[name] = by; pending.add(name)

asked = []  # every (name, requirer, requirement) on a shipped package, checked against the shipped version
old_ver = {}
pending = set()
roots = [f"ray[tune]=={venv_version('ray')}", f"optuna=={venv_version('optuna')}", f"mlflow=={venv_version('mlflow')}",
         f"mlflow-skinny=={venv_version('mlflow-skinny')}", f"mlflow-tracing=={venv_version('mlflow-tracing')}"]
roots += os.environ.get("DEVICE_PACK_EXTRA", "").split()
for r in roots:
    add(Requirement(r), "(root)")

wheel_of = {}
pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
       "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"] + [a for p in PLATS for a in ("--platform", p)] + ["-d", CACHE]
while pending:
    batch, pending = sorted(pending), set()
    missing = [str(want[n][0]) for n in batch if not cached_wheel(n, want[n][0].specifier)]
    if missing:
        print(f"device_pack: downloading {len(missing)} wheel(s): {' '.join(missing)}", flush=True)
        r = subprocess.run(pip + missing, stderr=subprocess.PIPE, text=True)
        err = "\n".join(l for l in r.stderr.splitlines() if "is ignored: it is neither a file nor a directory" not in l)
        if r.returncode:
            sys.exit(f"device_pack: pip download failed:\n{err}")
    for n in batch:
        pin, extras = want[n]
        whl = cached_wheel(n, pin.specifier)
        if not whl:
            sys.exit(f"device_pack: no cp312 manylinux x86_64 wheel for {pin}")
        wheel_of[n] = whl
        old_ver[n] = parse_wheel_filename(whl)[1]
        for line in metadata(whl).get_all("Requires-Dist") or []:
            req = Requirement(line)
            applies = req.marker is None or any(req.marker.evaluate({**ENV, "extra": e}) for e in [""] + sorted(extras))
            if applies:
                add(req, f"{n}{'[' + ','.join(sorted(extras)) + ']' if extras else ''}")

for name, by, req in asked:
    if not req.specifier.contains(old_ver[name], prereleases=True):
        warnings.append(f"{by} wants {req} but {name} {old_ver[name]} is shipped")

# unpack: purelib/platlib of .data go to the site root; file modes are kept from the zip
def unpack(whl, root):
    with zipfile.ZipFile(os.path.join(CACHE, whl)) as z:
        for info in z.infolist():
            path = info.filename
            m = re.match(r"[^/]+\.data/(purelib|platlib|scripts|headers|data)/(.*)", path)
            if m:
                if m.group(1) not in ("purelib", "platlib"):
                    continue
                path = m.group(2)
            if path.endswith("/") or not path:
                continue
            dest = os.path.join(root, path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                out.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 else 0o644)

for n, whl in sorted(wheel_of.items()):
    unpack(whl, SITE)

# fallbacks: pure-python copies of device packages (.venv's version), put on the path by device_env.sh only when
# the device's own version does not satisfy what the shipped packages require (e.g. pydantic: typing-extensions>=4.16)
fallback = {}
for name in (canonicalize_name(n) for n in os.environ.get("FALLBACK_PKGS", "").split()):
    v = venv_version(name)
    if v is None:
        warnings.append(f"fallback {name} is not installed in .venv: skipped"); continue
    whl = cached_wheel(name, Requirement(f"{name}=={v}").specifier)
    if not whl:
        r = subprocess.run(pip + [f"{name}=={v}"], stderr=subprocess.PIPE, text=True)
        whl = cached_wheel(name, Requirement(f"{name}=={v}").specifier)
        if r.returncode or not whl:
            sys.exit(f"device_pack: no wheel for fallback {name}=={v}")
    if not whl.endswith("-none-any.whl"):
        sys.exit(f"device_pack: fallback {name} must be pure python, got {whl}")
    unpack(whl, os.path.join(SITE, "_fallback", name))
    fallback[name] = (v, whl)

# what the shipped packages require of the device image (markers already evaluated), checked there by device_env.sh
with open(os.path.join(SITE, ".device-requires.txt"), "w") as f:
    for by, r in sorted(set(device_reqs)):
        req = Requirement(r)
        f.write(f"{by}\t{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}\n")

# lists for the shell part and the manifest
with open(os.path.join(STAGE, "wheels.txt"), "w") as f:
    for n, whl in sorted(wheel_of.items()):
        f.write(f"{n} {old_ver[n]} {whl} {os.path.getsize(os.path.join(CACHE, whl))} {why[n]}\n")
    for n, (v, whl) in sorted(fallback.items()):
        f.write(f"{n} {v} {whl} {os.path.getsize(os.path.join(CACHE, whl))} (fallback in _fallback/{n}: used only if the device's is too old)\n")
with open(os.path.join(STAGE, "device_reqs.txt"), "w") as f:
    for by, r in sorted(set(device_reqs)):
        f.write(f"{by}: {r}\n")
with open(os.path.join(STAGE, "warnings.txt"), "w") as f:
    f.write("".join(w + "\n" for w in warnings))
for w in warnings:
    print("device_pack: WARNING:", w, file=sys.stderr)
print(f"device_pack: {len(wheel_of)} distributions unpacked", flush=True)
PYEOF

# ---- 2. strip what neither the bench nor `python -m tuner.run` ever loads -------------------------------------------
before=$(du -sk "$SITE" | cut -f1)
rm -rf "${SITE:?}"/ray/jars \
       "${SITE:?}"/ray/rllib \
       "${SITE:?}"/ray/llm \
       "${SITE:?}"/ray/dashboard/client \
       "${SITE:?}"/mlflow/server/js/build \
       "${SITE:?}"/bin
find "$SITE" -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} +
find "$SITE" -type f \( -name '*.pyc' -o -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \
     -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' \) -delete
# symbol tables / debug info of ELF files (Ray ships gcs_server, raylet and _raylet.so unstripped: ~35 MB)
if command -v strip >/dev/null; then
    find "$SITE" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 |
        while IFS= read -r -d '' f; do
            if [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                strip --strip-unneeded "$f" || echo "device_pack: WARNING: strip failed on $f" >&2
            fi
        done
fi
after=$(du -sk "$SITE" | cut -f1)

# ---- 3. console-script launchers (ray, mlflow, optuna, ...) in bin/ ---------------------------------------------------
mkdir -p "$SITE/bin"
"$PY" - "$SITE" <<'PYEOF'
import configparser, glob, os, sys
site = sys.argv[1]
made = []
for ep in sorted(glob.glob(os.path.join(site, "*.dist-info", "entry_points.txt"))):
    cp = configparser.ConfigParser(delimiters=("=",)); cp.optionxform = str
    cp.read(ep)
    if not cp.has_section("console_scripts"):
        continue
    for name, target in cp.items("console_scripts"):
        mod, _, attr = target.strip().partition(":")
        attr = attr.split("[")[0].strip()
        base = os.path.join(site, *mod.strip().split("."))
        if not (os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))):
            continue  # module stripped (e.g. rllib)
        path = os.path.join(site, "bin", name)
        with open(path, "w") as f:
            f.write(f"#!/usr/bin/env python3\nimport sys\nfrom {mod.strip()} import {attr.split('.')[0]}\n"
                    f"sys.argv[0] = {name!r}\nsys.exit({attr}())\n")
        os.chmod(path, 0o755)
        made.append(name)
print("device_pack: launchers in bin/:", " ".join(sorted(set(made))))
PYEOF

# ---- 4. one archive (deterministic, rebuilt only when its contents change) -----------------------------------------
stamp=$( (cat "$STAGE/wheels.txt"; sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1) | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$ARCHIVE" ] && grep -qx "stamp: $stamp" "$MANIFEST" 2>/dev/null; then
    echo "device_pack: $ARCHIVE is up to date (stamp ${stamp:0:12}; FORCE=1 to rebuild)"
else
    echo "device_pack: compressing $((after / 1024)) MiB (xz -9e) ..."
    tar -C "$SITE" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1704067200 -cf - . |
        xz -9e -T2 -c >"$ARCHIVE.partial"
    mv "$ARCHIVE.partial" "$ARCHIVE"

    {
        echo "# .gpu_py/site.tar.xz — made by bench/device_pack.sh; unpack with bench/device_env.sh"
        echo "stamp: $stamp"
        echo "archive: $(stat -c %s "$ARCHIVE") bytes, sha256 $(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
        echo "unpacked: $((after / 1024)) MiB after stripping ($((before / 1024)) MiB as wheels unpack)"
        echo "target: CPython 3.12, manylinux x86_64"
        echo
        echo "## shipped distributions: name version wheel_bytes unpacked_kib(after strip) wheel  <- required by"
        "$PY" - "$SITE" "$STAGE/wheels.txt" <<'PYEOF'
import csv, glob, os, sys
site, wheels = sys.argv[1], sys.argv[2]
from packaging.utils import canonicalize_name
sizes = {}
for rec in glob.glob(os.path.join(site, "*.dist-info", "RECORD")) + glob.glob(os.path.join(site, "_fallback", "*", "*.dist-info", "RECORD")):
    di = os.path.basename(os.path.dirname(rec))
    root = os.path.dirname(os.path.dirname(rec))
    name = canonicalize_name(di[: -len(".dist-info")].rsplit("-", 1)[0])
    total = 0
    for row in csv.reader(open(rec, newline="")):
        if not row:
            continue
        p = row[0]
        parts = p.split("/")
        if parts[0].endswith(".data") and len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            p = "/".join(parts[2:])
        f = os.path.join(root, p)
        if os.path.isfile(f):
            total += os.path.getsize(f)
    sizes[name] = total
for line in open(wheels):
    n, v, whl, sz, by = line.rstrip("\n").split(" ", 4)
    print(f"{n} {v} {sz} {sizes.get(n, 0) // 1024} {whl}  <- {by}")
PYEOF
        echo
        echo "## stripped: ray/jars ray/rllib ray/llm ray/dashboard/client mlflow/server/js/build, tests/"
        echo "##           __pycache__/, *.pyi *.pyx *.pxd *.pxi *.c *.cc *.cpp *.h *.hpp; ELF symbol tables (strip --strip-unneeded)"
        echo
        echo "## requirements left to the device image (review upper bounds against the device's versions)"
        cat "$STAGE/device_reqs.txt"
        if [ -s "$STAGE/warnings.txt" ]; then echo; echo "## warnings"; cat "$STAGE/warnings.txt"; fi
        echo
        echo "## console scripts (in bin/): $(cd "$SITE/bin" && echo *)"
    } >"$MANIFEST"
fi

size=$(stat -c %s "$ARCHIVE")
mib=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')
echo "device_pack: $ARCHIVE = $size bytes ($mib MiB); manifest $MANIFEST"
if [ "$size" -gt $((MAX_MIB * 1048576)) ]; then
    echo "device_pack: FAIL: archive is over $MAX_MIB MiB" >&2
    exit 1
fi

# bench/find_python.sh — SOURCE it, then `find_python torch numpy ...`: sets PY to the first of $PYTHON,
# .venv/bin/python, python3, python that imports those modules, or says which were tried and returns 2.
# The device machines have torch but no .venv; this machine has the .venv (bench/gpu_*.sh use it on both).
find_python() {
    local candidate modules
    modules=$(IFS=,; echo "$*")
    for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c "import $modules" >/dev/null 2>&1; then
            PY=$candidate
            return 0
        fi
    done
    echo "error: no Python that imports ${modules//,/, } (tried \$PYTHON, .venv/bin/python, python3, python)" >&2
    return 2
}

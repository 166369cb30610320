#!/usr/bin/env bash
# Check the system libraries arhub needs outside Python before installing anything.
# WeasyPrint (PDF statements) dlopen()s GObject, Pango, PangoFT2, HarfBuzz and Fontconfig,
# and needs at least one font. Prints the Debian/Ubuntu packages to install and exits 1
# when something is missing.
set -u

missing_pkgs=()
missing_libs=()

have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }

check() {  # check <soname pattern> <debian package>
    if ! have_lib "$1"; then
        missing_libs+=("$1")
        missing_pkgs+=("$2")
    fi
}

if ! command -v ldconfig >/dev/null 2>&1 && [ -x /sbin/ldconfig ]; then
    PATH="$PATH:/sbin:/usr/sbin"
fi

check 'libgobject-2.0.so.0' libglib2.0-0
check 'libpango-1.0.so.0' libpango-1.0-0
check 'libpangoft2-1.0.so.0' libpangoft2-1.0-0
check 'libharfbuzz.so.0' libharfbuzz0b
check 'libfontconfig.so.1' libfontconfig1

if command -v fc-list >/dev/null 2>&1; then
    if [ -z "$(fc-list 2>/dev/null | head -n 1)" ]; then
        missing_libs+=("any font")
        missing_pkgs+=(fonts-dejavu-core)
    fi
elif [ ! -d /usr/share/fonts ] || [ -z "$(find /usr/share/fonts -type f \( -name '*.ttf' -o -name '*.otf' \) -print -quit 2>/dev/null)" ]; then
    missing_libs+=("any font")
    missing_pkgs+=(fonts-dejavu-core)
fi

# statements print dates and country names in the customer's language: Chinese, Japanese and
# Korean need a CJK font, Hindi a Devanagari one (DejaVu has neither)
if command -v fc-list >/dev/null 2>&1; then
    if [ -z "$(fc-list ':family=WenQuanYi Micro Hei' 2>/dev/null | head -n 1)" ]; then
        missing_libs+=("a CJK font for statements in Chinese, Japanese and Korean")
        missing_pkgs+=(fonts-wqy-microhei)
    fi
    if [ -z "$(fc-list ':family=Lohit Devanagari' 2>/dev/null | head -n 1)" ]; then
        missing_libs+=("a Devanagari font for statements in Hindi")
        missing_pkgs+=(fonts-lohit-deva)
    fi
fi

py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
    echo "arhub: $py not found; install Python 3.11+ (apt-get install python3 python3-venv)" >&2
    exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "arhub: Python 3.11 or newer is required, $("$py" --version 2>&1) found" >&2
    exit 1
fi
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing_libs+=("python venv/ensurepip")
    missing_pkgs+=(python3-venv)
fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
    {
        echo "arhub: missing system libraries needed by WeasyPrint (PDF statements) or the venv:"
        printf '  - %s\n' "${missing_libs[@]}"
        echo "Install them with:"
        echo "  sudo apt-get install -y ${missing_pkgs[*]}"
        echo "(other systems: https://doc.courtbouillon.org/weasyprint/stable/first_steps.html)"
    } >&2
    exit 1
fi
exit 0

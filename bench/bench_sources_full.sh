#!/usr/bin/env bash
# Issue 24 at full network depth (fine-tuned, not frozen features), on a schedule this 2-core host affords:
# HAM10000-only against HAM10000 + ISIC 2017 pooled (the multi-source lever), both tested on ISIC 2020 (held out by
# both) and on HAM10000's test split (the same images in both: each source's split is drawn on its own), and
# local calibration (skinray calibrate on 30% of ISIC 2020, figures on the other 70%).
#
#   bash bench/bench_sources_full.sh [WORKDIR]     # ~35-50 min on 2 cores; results: bench_compare tables
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W="${1:-${SKINRAY_BENCH_DIR:-/tmp/skinray-bench}/sources-full}"
D="$(cd .. && pwd)/shared/data"
WTS="$(cd .. && pwd)/shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
HEAD="${HEAD_EPOCHS:-2}" TUNE="${TUNE_EPOCHS:-3}"
S=(.venv/bin/skinray)
mkdir -p "$W"
src() { echo "--source $1 $D/$1/$2 $D/$1/images"; }
[ -f "$W/p-ham/report.json" ] || "${S[@]}" prepare $(src ham10000 HAM10000_metadata.csv) --out "$W/p-ham"
[ -f "$W/p-2017/report.json" ] || "${S[@]}" prepare $(src isic2017 metadata.csv) --out "$W/p-2017"
[ -f "$W/p-pool/report.json" ] || "${S[@]}" prepare $(src ham10000 HAM10000_metadata.csv) \
    $(src isic2017 metadata.csv) --out "$W/p-pool"
.venv/bin/python - "$D/isic2020/metadata.csv" "$W" <<'PY'
import sys, numpy as np, pandas as pd
m = pd.read_csv(sys.argv[1]); pick = np.random.default_rng(0).random(len(m)) < 0.30
m[pick].to_csv(f"{sys.argv[2]}/isic2020-local30.csv", index=False); m[~pick].to_csv(f"{sys.argv[2]}/isic2020-rest70.csv", index=False)
m.to_csv(f"{sys.argv[2]}/isic2020-all.csv", index=False)
PY
for part in all rest70; do
  [ -f "$W/p-2020-$part/report.json" ] || "${S[@]}" prepare --source isic2020 "$W/isic2020-$part.csv" \
      "$D/isic2020/images" --out "$W/p-2020-$part"
done
for m in ham pool; do
  [ -f "$W/m-$m/skinray.json" ] || "${S[@]}" train --prepared "$W/p-$m" --out "$W/m-$m" --weights "$WTS" \
      --head-epochs "$HEAD" --fine-tune-epochs "$TUNE"
done
[ -f "$W/m-pool-2020cal/skinray.json" ] || "${S[@]}" calibrate --model "$W/m-pool" --labelled \
    "$W/isic2020-local30.csv" --images "$D/isic2020/images" --out "$W/m-pool-2020cal"
ev() { [ -f "$W/e-$1-$2-$3/metrics.json" ] || "${S[@]}" evaluate --model "$W/m-$1" --prepared "$W/p-$2" \
    --split "$3" --out "$W/e-$1-$2-$3"; }
for m in ham pool; do ev $m ham test; ev $m 2017 test; ev $m 2020-all all; ev $m 2020-rest70 all; done
ev ham 2017 all; ev pool-2020cal 2020-rest70 all
cmp() { .venv/bin/python bench/bench_compare.py --ref "$W/e-$1" --new "$W/e-$2" --ref-name "$3" --new-name "$4"; }
cmp ham-ham-test pool-ham-test "HAM only" "HAM+2017"
cmp ham-2017-test pool-2017-test "HAM only (2017 held out)" "HAM+2017 (2017 in training)"
cmp ham-2020-all-all pool-2020-all-all "HAM only" "HAM+2017"
cmp pool-2020-rest70-all pool-2020cal-2020-rest70-all "HAM+2017" "HAM+2017, calibrated on 30% of 2020"

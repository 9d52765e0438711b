#!/usr/bin/env bash
# The GPU checks in one command of at most 8 minutes: the CUDA tests (every pair through the CUDA graph, state-level
# graph-vs-eager agreement, equal checkpoints, kill and resume, a failed capture then a second one), `ganbench bench`
# for the speed targets (ratios beside the eager reference), the default job's wall time and execution record, and
# loss-level graph-vs-eager agreement at real sizes.
#
# Prepare here, in the project root (the GPU machine has torch but no package index):
#   bash scripts/gpu_check.sh prepare   # ../shared/tools/device-wheels.sh -> .whl/, plus pytest and pytest-xdist
# Then one device call:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Every log goes to $OUT: summary.txt (one screen: stage by stage, with exit codes and seconds), pytest_gpu.log,
# bench.log, train_default.log, metrics_default.json, samples_default.png, agreement.log, env.txt.
# Stages run in priority order under one budget (GPU_CHECK_BUDGET, 470 s). A stage that would not fit is skipped and
# says so. The installed ganbench is this checkout's code: its sources are copied over the carried wheel's.
#
# On the CPU (no install, tiny models, 1 timed iteration; the gpu tests are collected and skipped) the same stages
# check the script itself:
#   GPU_CHECK_DRY=1 OUT=/tmp/gpu_check bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == prepare ]]; then
  set -e
  bash ../shared/tools/device-wheels.sh
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    pytest pluggy iniconfig packaging pygments pytest-xdist execnet
  ls .whl
  exit 0
fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET:-470}
export PYTHONUNBUFFERED=1 GANBENCH_CACHE=/tmp/ganbench-cache
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

if [[ -n "${GPU_CHECK_DRY:-}" ]]; then
  DEVICE=cpu
  TINY=(model.generator.ch=8 model.discriminator.ch=8 batch_size=8)
  ITERS=(--warmup 1 --iters 1)
  STEPS=4
  TRAIN_TINY=(steps=4 log_every=2 sample_every=2 eval_every=4 ckpt_every=4 "metrics.names=[]" metrics.primary=null
              batch_size=8)
else
  DEVICE=cuda
  TINY=()
  ITERS=(--warmup 10 --iters 60)
  STEPS=50
  TRAIN_TINY=()
fi
PY=python3
command -v "$PY" >/dev/null || PY=python

exec 3>&1  # the terminal, whatever a stage's output is redirected to
note() { echo "$*" >> "$SUMMARY"; echo "$*" >&3; }

# stage NAME SECONDS COMMAND...: run COMMAND under `timeout`, within what is left of the budget.
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if ((left < 15)); then
    note "SKIP  $name (budget spent: ${SECONDS}s of ${BUDGET}s)"
    return 0
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" || rc=$?
  note "$( ((rc == 0)) && echo 'OK  ' || echo 'FAIL') $name  rc=$rc  $((SECONDS - t0))s$( ((rc == 124)) && echo " (timed out at ${limit}s)")"
}

# 0. Dependencies: the carried wheels, as ../shared/tools/device-wheels.sh's header says; then this checkout's sources
#    over the installed ganbench (so the code under test is the checkout's, whatever wheel .whl/ holds).
if [[ -z "${GPU_CHECK_DRY:-}" ]]; then
  stage "install carried wheels" 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl 2>&1 | tail -3
  [[ -d /tmp/site/ganbench ]] || { note "FAIL  no ganbench in /tmp/site: run 'bash scripts/gpu_check.sh prepare' here"; exit 1; }
  cp -r ganbench/. /tmp/site/ganbench/ && cp -r conf/. /tmp/site/ganbench/conf/
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONSAFEPATH=1  # import the installed ganbench (with conf)
fi
{
  date -u; nvidia-smi 2>&1 | head -15
  $PY -c "import sys, torch, ganbench; print(sys.version.split()[0], 'torch', torch.__version__,
          'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA',
          'ganbench at', ganbench.__file__)"
  git log -1 --format='commit %H %s' 2>/dev/null; git status --short 2>/dev/null | head -20
} > "$OUT/env.txt" 2>&1
note "env: $(tail -n +1 "$OUT/env.txt" | grep -m1 '^3\.' || echo 'python/torch line missing, see env.txt')"

# 1. The GPU tests: every pair through the graph, state-level agreement, checkpoints, kill and resume, a failed
#    capture then a second one (tests/test_gpu.py), loss-level graph-vs-eager agreement (tests/test_fastpath.py).
XDIST=$( [[ -z "${GPU_CHECK_DRY:-}" ]] && $PY -c "import xdist" 2>/dev/null && echo "-n 6" )
stage "pytest -m gpu" 210 $PY -m pytest -q -m gpu tests/test_gpu.py tests/test_fastpath.py -p no:cacheprovider \
  $XDIST > "$OUT/pytest_gpu.log" 2>&1
note "      $(tail -1 "$OUT/pytest_gpu.log")"
grep -E '^(FAILED|ERROR)' "$OUT/pytest_gpu.log" | head -8 | cut -c1-160 | while read -r line; do note "      $line"; done

# 2. `ganbench bench` for the speed targets, most important first. Ratio lines go to the summary.
: > "$OUT/bench.log"
bench() {  # bench LABEL OVERRIDES...
  local label=$1; shift
  stage "bench $label" 75 $PY -m ganbench.cli bench "${ITERS[@]}" "$@" "${TINY[@]}" "device=$DEVICE" \
    > /tmp/gpu_check_bench.txt 2>&1
  { echo "### $label: ganbench bench ${ITERS[*]} $* ${TINY[*]} device=$DEVICE"; cat /tmp/gpu_check_bench.txt; echo; } \
    >> "$OUT/bench.log"
  note "      $(grep -E '^(ganbench   |reference  none)' /tmp/gpu_check_bench.txt)"
  note "      $(grep -E '^(ratio|ganbench: error)' /tmp/gpu_check_bench.txt || tail -1 /tmp/gpu_check_bench.txt)"
}
SNGAN=(model=sngan_cnn batch_size=64 n_dis=5)
bench "sngan_cnn b64 n_dis 5 hinge+sn (target >= 2.5x)" "${SNGAN[@]}" loss=hinge constraint=sn
bench "sngan_cnn b64 n_dis 5 wgan_gp (target >= 2.5x)" "${SNGAN[@]}" loss=wgan_gp constraint=none
bench "sngan_cnn b64 n_dis 5 sgan+gn (target >= 2.5x)" "${SNGAN[@]}" loss=sgan constraint=gn
bench "dcgan_small n_dis 1 hinge+sn, default job shapes (target >= 4x)" model=dcgan_small n_dis=1 loss=hinge constraint=sn

# 3. The default job, as a user runs it: wall time, steps/s, the fast path's log line, the metric curve.
rm -rf /tmp/gb_default
stage "default job (ganbench train)" 150 $PY -m ganbench.cli train "${TRAIN_TINY[@]}" "device=$DEVICE" progress=false \
  hydra.run.dir=/tmp/gb_default > "$OUT/train_default.log" 2>&1
cp /tmp/gb_default/metrics.json "$OUT/metrics_default.json" 2>/dev/null
cp "$(ls /tmp/gb_default/samples/*.png 2>/dev/null | tail -1)" "$OUT/samples_default.png" 2>/dev/null
note "      $(grep -m1 'fast path' "$OUT/train_default.log" || echo 'no fast-path log line in train_default.log')"
note "      $($PY -c "import json; e = json.load(open('$OUT/metrics_default.json'))['execution'];
print('execution:', e['path'], '|', e['reason'], '|', e['self_check'], '| eager', e['eager_iterations'], 'of',
      e['iterations'], '|', e['precision'], e['device'], 'torch', e['torch'], 'cuda', e['cuda'])" 2>&1 | tail -1)"
note "      $($PY -c "import json; m = json.load(open('$OUT/metrics_default.json'));
print('wall_time_s', m['wall_time_s'], 'status', m['status'], 'history',
      [(h['step'], {k: round(v, 1) for k, v in h['metrics'].items()}) for h in m['history']])" 2>&1 | tail -1)"
note "      $(grep -E 'steps/s' "$OUT/train_default.log" | tail -1)"

# 4. Graph vs eager losses, first $STEPS steps, at real sizes: the largest differences, step by step.
stage "graph-vs-eager agreement" 80 $PY - "$DEVICE" "$STEPS" "${TINY[@]}" > "$OUT/agreement.log" 2>&1 <<'EOF'
import logging, sys, time
from functools import partial
import torch
from ganbench import config, fastpath
from ganbench.build import build
from ganbench.train import train_iteration

logging.basicConfig(level=logging.INFO, format="    log: %(message)s")
log = logging.getLogger("ganbench")
device, steps, tiny = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
CASES = {
    "default job (dcgan_small hinge+sn b64)": [],
    "default job, precision=bf16": ["precision=bf16"],
    "sngan_cnn hinge+sn b64 n_dis 5": ["model=sngan_cnn", "n_dis=5"],
    "sngan_cnn wgan_gp b64 n_dis 5": ["model=sngan_cnn", "n_dis=5", "loss=wgan_gp", "constraint=none"],
    "sngan_cnn sgan+gn b64 n_dis 5": ["model=sngan_cnn", "n_dis=5", "loss=sgan", "constraint=gn"],
    "sngan_resnet hinge+sn, linear decay, EMA": ["model=sngan_resnet", "n_dis=5", "optim.decay=linear",
                                                 "ema_decay=0.999", "steps=100"],
}

def run(overrides, mode):
    """Losses of the first `steps` iterations: mode graph (fast=true), plain (fast=false) or same (the graph path's
    optimizers and lr handling, run eagerly: what the graph must reproduce up to rounding)."""
    cfg = config.compose(overrides + tiny + [f"device={device}", f"fast={mode != 'plain'}"])
    r = build(cfg, torch.device(device))
    Dw = r.constraint.wrap(r.D)
    eager = partial(train_iteration, r, Dw, r.constraint.run_penalties(r.loss))
    if mode == "same":
        if cfg.channels_last:
            fastpath.to_channels_last(r)
        step = fastpath.bf16_autocast(eager) if cfg.precision == "bf16" else eager
        fastpath.prepare(r)
        lr = {o: [g["lr"] if torch.is_tensor(g["lr"]) else None for g in o.param_groups] for o in (r.opt_g, r.opt_d)}

        def iteration():
            with fastpath.held_back(r.schedulers):
                out = step()
            fastpath.step_schedulers(r, lr)
            return out
    else:
        iteration = fastpath.make_iteration(r, eager, cfg, log)
    t, out, calls = time.perf_counter(), [], []
    for i in range(steps):
        t_call = time.perf_counter()
        d, g = iteration()
        out.append(torch.stack([d.total.clone(), g.total.clone()]))
        if device == "cuda" and i <= fastpath.WARMUP + 1:  # per call: an eager warm-up, the capture call, a replay
            torch.cuda.synchronize()
        calls.append(time.perf_counter() - t_call)
    check = getattr(iteration, "check", "not run")
    w = fastpath.WARMUP
    cost = (f"; calls {w} (eager) / {w + 1} (capture + self-check: {check}) / {w + 2} (replay): "
            f"{calls[w - 1]:.3f} / {calls[w]:.3f} / {calls[w + 1]:.4f} s") if len(calls) > w + 1 else ""
    return torch.stack(out).cpu(), fastpath.describe(iteration) + cost, time.perf_counter() - t

torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
bad = 0
for name, overrides in CASES.items():
    got, status, t_graph = run(overrides, "graph")
    same = run(overrides, "same")[0] if device == "cuda" else got  # capturable optimizers need CUDA
    plain, _, t_plain = run(overrides, "plain")
    tol = 5e-2 if "bf16" in name else 2e-2
    d_same, d_plain = (got - same).abs().max(1).values, (got - plain).abs().max(1).values
    ok = (status.startswith("CUDA graph (") and bool(torch.allclose(got, same, rtol=tol, atol=tol))
          and bool(torch.allclose(got[:10], plain[:10], rtol=tol, atol=tol)))
    bad += not ok
    print(f"{'ok ' if ok else 'BAD'} {name}: {status}")
    print(f"    max |graph - eager, same optimizer arithmetic| over {steps} steps {d_same.max():.2e} "
          f"(step 1 {d_same[0]:.2e}); |graph - fast=false| steps 1 / 1-10 / 1-{steps}: {d_plain[0]:.2e} / "
          f"{d_plain[:10].max():.2e} / {d_plain.max():.2e}; tolerance {tol}; {steps} steps in {t_plain:.2f}s "
          f"fast=false, {t_graph:.2f}s graphed (warm-up and capture included)")
sys.exit(1 if bad and device == "cuda" else 0)
EOF
while read -r line; do note "      $line"; done < <(grep -E '^(ok |BAD)' "$OUT/agreement.log")

# 5. Also asked for: batch 256, sngan_resnet, bf16, and ganbench eager (fast=false) against the same reference.
BIG=(model=sngan_cnn batch_size=256 n_dis=5)
bench "sngan_cnn b256 n_dis 5 hinge+sn" "${BIG[@]}" loss=hinge constraint=sn
bench "sngan_cnn b256 n_dis 5 wgan_gp" "${BIG[@]}" loss=wgan_gp constraint=none
bench "sngan_cnn b256 n_dis 5 sgan+gn" "${BIG[@]}" loss=sgan constraint=gn
RES=(model=sngan_resnet batch_size=64 n_dis=5)
bench "sngan_resnet b64 n_dis 5 hinge+sn" "${RES[@]}" loss=hinge constraint=sn
bench "sngan_resnet b64 n_dis 5 wgan_gp" "${RES[@]}" loss=wgan_gp constraint=none
bench "sngan_resnet b64 n_dis 5 sgan+gn" "${RES[@]}" loss=sgan constraint=gn
bench "sngan_cnn b64 n_dis 5 hinge+sn, precision=bf16" "${SNGAN[@]}" loss=hinge constraint=sn precision=bf16
bench "sngan_cnn b64 n_dis 5 hinge+sn, fast=false (ganbench eager)" "${SNGAN[@]}" loss=hinge constraint=sn fast=false
note "done in ${SECONDS}s"

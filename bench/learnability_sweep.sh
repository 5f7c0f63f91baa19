#!/usr/bin/env bash
# The learnability sweeps of docs/learnability.md: many tiny-model variants at once, one CPU thread and
# a share of one GPU each (13 variants in 142 s on an H200 machine with 16 cores). SWEEP=2 (or SECOND=1): the
# second sweep; SWEEP=3: the tiny design of session 4 and its neighbours at 32M tokens each (12-point learning
# curves of held-out-name level 0, levels 0-1 at the end): does the lookup hold, do operations appear, does
# the circuit grow without the warm-up as the fitted law predicts (~16M)? Not yet run: budget about 7 minutes
# on one H100/H200; WATCH=540 keeps the partial logs of a run cut off at 10 minutes.
# Results: $OUT/sweep.jsonl (RESULT lines), $OUT/curves.txt. DEV=cpu runs it on a CPU machine (slowly).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEV=${DEV:-cuda}; LOG=/tmp/sweeplogs; mkdir -p $LOG
(sleep ${WATCH:-285}; tar czf ${OUT:-/tmp}/partial_logs.tgz -C $LOG .) &
C="--vocab 2048 --ctx 128 --d-model 128 --items 150 --curve 8 --device $DEV --threads 1 --unique 2000000"
run() { tag=$1; shift; $PY bench/tasks_learnability.py $C --tag $tag "$@" > $LOG/$tag.log 2>&1 & PIDS="$PIDS $!"; }
SWEEP=${SWEEP:-$([ "${SECOND:-0}" = 1 ] && echo 2 || echo 1)}
if [ "$SWEEP" = 3 ]; then  # tasks version 6: the tiny design (T) and its neighbours at 32M tokens
T="--arch llama --d-model 64 --vocab 512 --warm-induction 1000 --warm-ids all"
L="--tokens 32000000 --unique 16000000 --batch 32 --curve 12"
run L1_tiny_design_32M        $L $T
run L2_tiny_design_seed1_32M  $L $T --seed 1
run L3_tiny_no_warmup_32M     $L --arch llama --d-model 64 --vocab 512
run L4_tiny_prose3_32M        $L $T --short 3
run L5_tiny_L3_32M            $L $T --layers 3
run L6_tiny_code_32M          $L $T --code 0.5
run L7_neox_d128_warm_32M     $L --warm-induction 1000 --warm-ids all
run L8_llama_d128_warm_32M    $L --arch llama --warm-induction 1000 --warm-ids all
elif [ "$SWEEP" = 1 ]; then
run A_base_1M       --tokens 1000000  --batch 8
run B_p150_1M       --tokens 1000000  --batch 8 --pool 150
run C_p150tie_1M    --tokens 1000000  --batch 8 --pool 150 --tie
run D_base_4M       --tokens 4000000  --batch 8
run E_p150_4M       --tokens 4000000  --batch 8 --pool 150
run F_p150tie_4M    --tokens 4000000  --batch 8 --pool 150 --tie
run G_p150tieL3_4M  --tokens 4000000  --batch 8 --pool 150 --tie --layers 3
run H_p150tie_b4_2M --tokens 2000000  --batch 4 --pool 150 --tie
run I_p150tie_lr1_4M --tokens 4000000 --batch 8 --pool 150 --tie --lr 1e-3
run J_p150tie_code_4M --tokens 4000000 --batch 8 --pool 150 --tie --code 0.5
run K_base_16M_b32  --tokens 16000000 --batch 32
run L_p150tie_16M_b32 --tokens 16000000 --batch 32 --pool 150 --tie
run M_p150tie_8M_b16 --tokens 8000000 --batch 16 --pool 150 --tie
else  # second sweep: single-token pools and shorter key->value layouts
B="--pool 150 --tie --tokpool"
run a_ref_2M          --tokens 2000000 --batch 8
run b_ptt_2M          --tokens 2000000 --batch 8 $B
run c_s2ptt_1M        --tokens 1000000 --batch 8 $B --short 2
run d_s2ptt_2M        --tokens 2000000 --batch 8 $B --short 2
run d1_s2ptt_2M_seed1 --tokens 2000000 --batch 8 $B --short 2 --seed 1
run e_s2ptt_4M        --tokens 4000000 --batch 8 $B --short 2
run f_s3ptt_2M        --tokens 2000000 --batch 8 $B --short 3
run g_s2ptt_d64_4M    --tokens 4000000 --batch 8 $B --short 2 --d-model 64
run h_s2_pt_notie_2M  --tokens 2000000 --batch 8 --pool 150 --tokpool --short 2
run i_s2_tok_only_2M  --tokens 2000000 --batch 8 --tie --tokpool --short 2
run j_s2ptt_b4_2M     --tokens 2000000 --batch 4 $B --short 2
run k_s2ptt_lr1_2M    --tokens 2000000 --batch 8 $B --short 2 --lr 1e-3
run l_s2ptt_eng10_2M  --tokens 2000000 --batch 8 $B --short 2 --english 0.1
run m_s2ptt_code_2M   --tokens 2000000 --batch 8 $B --short 2 --code 0.5
run n_s2ptt_l3_2M     --tokens 2000000 --batch 8 $B --short 2 --layers 3
fi
wait $PIDS
grep -h "^RESULT" $LOG/*.log > ${OUT:-/tmp}/sweep.jsonl
grep -h "^CURVE" -H $LOG/*.log > ${OUT:-/tmp}/curves.txt
tar czf ${OUT:-/tmp}/sweep_logs.tgz -C $LOG .
echo "sweep done"; wc -l ${OUT:-/tmp}/sweep.jsonl

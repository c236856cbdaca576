#!/usr/bin/env bash
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 .scratch/conv_ncu.py 2>&1 | grep -v Warn | tee $OUT/conv_times.txt
NCU=1 timeout 150 ncu --clock-control none --kernel-name regex:_causal_conv_ --launch-count 3 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats python3 .scratch/conv_ncu.py > $OUT/ncu_conv.txt 2>&1; echo "ncu rc=$?"
grep -E "causal_conv|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|Issued Warp|No Eligible|L1/TEX Hit|L2 Hit|Block Limit|Waves Per SM" $OUT/ncu_conv.txt | head -80

#!/usr/bin/env bash
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
timeout 65 python3 .scratch/quick_train.py 2 2>&1 | grep -v Warn | tail -3

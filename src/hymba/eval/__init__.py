"""Evaluation: perplexity, the lm-eval adapter, recall benchmarks, the ablation study and the
meta-token / branch analysis. Submodules are imported on demand (some need optional extras)."""

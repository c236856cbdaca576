"""The very small model shape and training arguments shared by the training tests."""

from __future__ import annotations

from hymba.train import TrainArgs

SMALL_MODEL = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, global_attn_idx=[0], kv_reuse_group=None, num_memory_tokens=4,
    sliding_window=8, max_position_embeddings=64, orig_max_position_embeddings=64,
)


def small_args(corpus, out, **kw) -> TrainArgs:
    defaults = dict(
        out=str(out), data=[str(corpus)], model=dict(SMALL_MODEL), max_steps=4, seq_len=16,
        batch_size=2, lr=1e-2, eval_every=2, eval_batches=2, save_every=2, keep_checkpoints=0,
        sample_tokens=0, progress=False, val_fraction=0.1,
    )
    defaults.update(kw)
    return TrainArgs(**defaults)

"""The training loop: learns, is deterministic, resumes exactly, stops on a diverged loss."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facefuse.features.dataset import PairMaps, TrainSet
from facefuse.model import FusionConfig, FusionModel
from facefuse.train.loop import EpochState, TrainConfig, TrainingDiverged, train


def _toy_train_set(n_classes: int = 12, per_class: int = 16, c: int = 16, seed: int = 0) -> TrainSet:
    """Maps with class structure: a per-class prototype plus noise, and mirrored variants."""
    rng = np.random.default_rng(seed)
    proto_a = rng.normal(size=(n_classes, c, 7, 7))
    proto_b = rng.normal(size=(n_classes, c, 7, 7))
    labels = np.repeat(np.arange(n_classes), per_class)
    a = (proto_a[labels] + 0.8 * rng.normal(size=(len(labels), c, 7, 7))).astype(np.float16)
    b = (proto_b[labels] + 0.8 * rng.normal(size=(len(labels), c, 7, 7))).astype(np.float16)
    maps = PairMaps(a, b, a[..., ::-1].copy(), b[..., ::-1].copy())
    return TrainSet("toy", maps, labels.astype(np.int64), n_classes)


def _model(ts: TrainSet, **over) -> FusionModel:
    torch.manual_seed(0)
    cfg = dict(in_channels=16, d_model=32, local_heads=2, global_heads=2, embedding_size=32,
               fusion_hidden=64, num_classes=ts.num_classes, beta=0.01, scale=16.0, margin=0.2)
    cfg.update(over)
    return FusionModel(FusionConfig(**cfg))


CFG = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=1, warmup_epochs=0.0)


def test_loss_falls_and_train_accuracy_rises() -> None:
    torch.set_num_threads(1)
    ts = _toy_train_set()
    hist = train(CFG, _model(ts), ts, [])
    assert len(hist) == 4
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    assert hist[-1]["train/acc"] > 0.5
    assert {"train/ce", "train/kl", "time/data_share"} <= set(hist[-1])


def test_same_seed_same_history_and_resume_equals_uninterrupted() -> None:
    torch.set_num_threads(1)
    ts = _toy_train_set()
    states: list[EpochState] = []
    full = train(CFG, _model(ts), ts, [], report=lambda m, s, e: states.append(copy.deepcopy(s)))
    again = train(CFG, _model(ts), ts, [])
    assert [h["train/loss"] for h in full] == [h["train/loss"] for h in again]

    # Resume from the state after epoch 2 in a fresh model: epochs 3-4 must match exactly.
    resumed = train(CFG, _model(ts), ts, [], resume=states[1])
    assert len(resumed) == 4
    assert [h["train/loss"] for h in resumed[2:]] == [h["train/loss"] for h in full[2:]]
    final_full = states[-1].model
    final_resumed: dict = {}
    train(CFG, _model(ts), ts, [], resume=states[1],
          report=lambda m, s, e: final_resumed.update(s.model))
    for k in final_full:
        torch.testing.assert_close(final_resumed[k], final_full[k], rtol=0, atol=0)


def test_absurd_learning_rate_stops_with_a_clear_error() -> None:
    ts = _toy_train_set()
    bad = TrainConfig(epochs=2, batch_size=32, lr=1e12, optimizer="sgd", grad_clip=0.0,
                      warmup_epochs=0.0)
    with pytest.raises(TrainingDiverged, match="loss became .* at epoch"):
        train(bad, _model(ts, beta=1e6), ts, [])


def test_invalid_training_settings_name_the_field() -> None:
    with pytest.raises(Exception, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(Exception, match="lr"):
        TrainConfig(lr=0)


class _Interrupted(Exception):
    """Raised by the test's checkpoint hook: the run stops mid-epoch, as a killed worker does."""


def test_interrupted_mid_epoch_resumes_to_the_same_metrics(tmp_path) -> None:
    from facefuse.data._io import atomic_write
    from facefuse.train.loop import StepCheckpoints

    torch.set_num_threads(1)
    ts = _toy_train_set()  # 192 samples, batch 32: 6 steps per epoch
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=1, warmup_epochs=0.5)
    full = train(cfg, _model(ts), ts, [])

    path = tmp_path / "step.pt"
    saved: list[tuple[int, int]] = []

    def save_then_die(state: EpochState) -> None:
        with atomic_write(path) as f:  # through a real file, as the trial writes it
            torch.save(state.to_dict(), f)
        saved.append((state.epoch, state.step))
        if (state.epoch, state.step) == (1, 4):
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(cfg, _model(ts), ts, [], step_checkpoints=StepCheckpoints(save_then_die,
                                                                        every_steps=2))
    assert saved == [(0, 2), (0, 4), (1, 2), (1, 4)]  # never at an epoch end
    state = EpochState.from_dict(torch.load(path, weights_only=True))
    assert (state.epoch, state.step) == (1, 4)

    # A fresh model resumes mid-epoch 2 from the file alone.
    resumed = train(cfg, _model(ts), ts, [], resume=state)
    assert len(resumed) == 3
    for got, want in zip(resumed, full):
        assert {k: v for k, v in got.items() if not k.startswith("time/")} == \
            {k: v for k, v in want.items() if not k.startswith("time/")}


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from facefuse.train.loop import StepCheckpoints

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        ts = _toy_train_set()  # 192 samples: 96 per rank, batch 16, 6 steps per epoch
        cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, seed=1, warmup_epochs=0.5)
        path = Path(out_dir) / "step.pt"

        def save(state: EpochState) -> None:  # rank 0 only
            if (state.epoch, state.step) == (1, 2):
                torch.save(state.to_dict(), path)

        full = train(cfg, _model(ts), ts, [], step_checkpoints=StepCheckpoints(save, 2))
        dist.barrier()
        state = EpochState.from_dict(torch.load(path, weights_only=True))
        resumed = train(cfg, _model(ts), ts, [], resume=state)
        if rank == 0:
            strip = [{k: v for k, v in h.items() if not k.startswith("time/")}
                     for h in (*full, *resumed)]
            (Path(out_dir) / "histories.json").write_text(json.dumps(strip))
    finally:
        dist.destroy_process_group()


def test_mid_epoch_resume_under_ddp_matches(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    hist = json.loads((tmp_path / "histories.json").read_text())
    full, resumed = hist[:2], hist[2:]
    assert len(resumed) == 2 and resumed == full


def _sharded(ts: TrainSet, tmp_path) -> TrainSet:
    """The same train set read from memory-mapped .npy shards, as a store's reader gives it."""
    from facefuse.features.store import ShardedMaps

    arrays = []
    for name in ("a", "b", "a_flip", "b_flip"):
        full = getattr(ts.maps, name)
        shards = []
        for i, start in enumerate(range(0, len(full), 50)):
            path = tmp_path / f"{name}-{i}.npy"
            np.save(path, full[start:start + 50])
            shards.append(np.load(path, mmap_mode="r"))
        arrays.append(ShardedMaps(shards, 50))
    return TrainSet(ts.name, PairMaps(*arrays), ts.labels, ts.num_classes)


def test_prefetch_gives_exactly_the_same_batches_and_metrics(tmp_path) -> None:
    from facefuse.features.store import prefetch
    from facefuse.train.loop import _gather

    torch.set_num_threads(1)
    ts = _sharded(_toy_train_set(), tmp_path)
    rng = np.random.default_rng(4)
    perm, flips = rng.permutation(len(ts.labels)), rng.random(len(ts.labels)) < 0.5
    slices = [slice(s, s + 24) for s in range(0, len(perm), 24)]
    inline = list(prefetch(lambda sl: _gather(ts, perm[sl], flips[sl]), slices, depth=0))
    ahead = list(prefetch(lambda sl: _gather(ts, perm[sl], flips[sl]), slices, depth=3))
    assert len(inline) == len(ahead) == len(slices)
    for x, y in zip(inline, ahead):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)

    cfg = dict(epochs=2, batch_size=32, lr=3e-3, seed=1, warmup_epochs=0.0)
    off = train(TrainConfig(**cfg, prefetch_batches=0), _model(ts), ts, [])
    on = train(TrainConfig(**cfg, prefetch_batches=3), _model(ts), ts, [])
    for h0, h1 in zip(off, on):
        assert {k: v for k, v in h0.items() if not k.startswith("time/")} == \
            {k: v for k, v in h1.items() if not k.startswith("time/")}


def test_prefetch_raises_a_read_error_at_its_batch_and_stops_its_thread() -> None:
    import threading

    from facefuse.features.store import prefetch

    def fetch(i: int) -> int:
        if i == 3:
            raise OSError("shard gone")
        return i * 10

    got = []
    with pytest.raises(OSError, match="shard gone"):
        for v in prefetch(fetch, range(6), depth=2):
            got.append(v)
    assert got == [0, 10, 20]
    # a consumer that stops early (a step raised) closes the iterator: no thread is left behind
    it = prefetch(fetch, range(3), depth=1)
    next(it)
    it.close()
    assert not any(t.name == "facefuse-prefetch" for t in threading.enumerate())


def test_without_mirrored_maps_evaluation_embeds_the_originals_only() -> None:
    from facefuse.features.dataset import EvalSet
    from facefuse.train.evaluate import embed_maps, embed_with_flip

    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 8, 7, 7)).astype(np.float16)
    b = rng.standard_normal((6, 8, 7, 7)).astype(np.float16)
    model = FusionModel(FusionConfig(in_channels_a=8, in_channels_b=8, map_size=7, num_classes=3,
                                     d_model=16, fusion_hidden=32, embedding_size=8))
    cpu = torch.device("cpu")
    alone = embed_with_flip(model, EvalSet("s", "verification", PairMaps(a, b, None, None)), 4, cpu)
    np.testing.assert_allclose(alone, embed_maps(model, a, b, 4, cpu))
    fused = embed_with_flip(model, EvalSet("s", "verification", PairMaps(a, b, a[::-1], b[::-1])), 4, cpu)
    np.testing.assert_allclose(fused, alone + embed_maps(model, a[::-1], b[::-1], 4, cpu))


def test_a_learned_mix_is_logged_every_epoch_and_a_fixed_one_is_not() -> None:
    torch.set_num_threads(1)
    ts = _toy_train_set()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=1, warmup_epochs=0.0)
    learned = train(cfg, _model(ts, mix="learned"), ts, [])
    values = [h["train/mix"] for h in learned]
    assert all(0.0 < v < 1.0 for v in values) and values[-1] != 0.5
    assert "train/mix" not in train(cfg, _model(ts), ts, [])[-1]
